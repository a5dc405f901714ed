"""One worker's gRPC session, from the host's side.

It sends Start, waits for Ready (or LoadFailed), then sends batches as the delivery window
allows and takes their results, until the runner drains it (Stop, then Stopped). While it runs
it owns the plugin's delivery; it decides nothing about the worker's life: what it sees (ready,
load failed, a protocol violation) goes to the runner's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final, Protocol

import grpc
import structlog

from agent_host.errors import ProtocolError
from agent_host.host import lifecycle as lc
from agent_host.host.delivery import Delivery
from agent_host.host.generation import WorkerGeneration
from agent_host.host.manifest import Manifest
from agent_host.host.results import Results
from agent_host.host.untrusted import RateLimit, printable
from agent_host.protocol import HostMessage, Start, Stop, WorkerMessage

log = structlog.get_logger("agent_host")

#: How long a worker that hung up its session has to exit by itself before it is killed.
SESSION_END_GRACE_S: Final = 0.5

Context = grpc.aio.ServicerContext[WorkerMessage, bytes]


class Peer(Protocol):
    """What a session needs of the runner whose worker it serves."""

    @property
    def name(self) -> str: ...

    @property
    def delivery(self) -> Delivery: ...

    @property
    def wake(self) -> asyncio.Event: ...

    @property
    def draining(self) -> bool: ...

    @property
    def log_limit(self) -> RateLimit: ...

    @property
    def start_message(self) -> bytes:
        """The serialized Start that opens the session."""
        ...

    @property
    def results(self) -> Results: ...

    def report(self, happened: lc.Input) -> None: ...


def start_message(manifest: Manifest, content: Path, validating: bool) -> bytes:
    """The serialized Start that opens each session of ``manifest``'s plugin, whose content's
    read-only copy is ``content``."""
    return HostMessage(
        start=Start(
            plugin_name=manifest.name,
            plugin_dir=str(content),
            entrypoint=manifest.entrypoint,
            config_json=manifest.config_json,
            validating=validating,
            log_level=logging.DEBUG if log.is_enabled_for(logging.DEBUG) else logging.INFO,
        )
    ).SerializeToString()


class _SessionEndedError(Exception):
    """The worker's side of the session ended without a goodbye."""


class Conversation:
    """The session of ``worker``, a generation of ``runner``'s plugin."""

    def __init__(self, runner: Peer, worker: WorkerGeneration) -> None:
        self._runner = runner
        self._worker = worker
        self._generation = worker.number
        self._delivery = runner.delivery
        self._log = log.bind(plugin=runner.name, pid=worker.pid)

    async def run(self, requests: AsyncIterator[WorkerMessage], context: Context) -> None:
        """Converse until the session ends, however it ends."""
        runner, generation = self._runner, self._generation
        try:
            await self._converse(requests, context)
        except ProtocolError as exc:
            self._log.error("worker broke the protocol", error=exc.message)
            verdict = lc.Verdict("protocol", f"protocol violation: {exc.message}")
            runner.report(lc.ProtocolViolated(generation, verdict))
        except (
            _SessionEndedError,
            grpc.aio.AioRpcError,
            ConnectionError,
            asyncio.InvalidStateError,
        ):
            # Usually the process is dying and its exit status, not this, is the cause: wait a
            # moment for it. A worker that hangs up and stays alive is killed.
            await self._exit_or_kill()

    async def _exit_or_kill(self) -> None:
        proc = self._worker.child.process
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), SESSION_END_GRACE_S)
        except TimeoutError:
            self._log.warning("worker closed its session but kept running; killing it")
            verdict = lc.Verdict("protocol", "closed its session but kept running")
            self._runner.report(lc.ProtocolViolated(self._generation, verdict))

    async def _converse(self, requests: AsyncIterator[WorkerMessage], context: Context) -> None:
        runner, worker = self._runner, self._worker
        await context.write(runner.start_message)
        async for message in requests:
            worker.heard()
            body = message.WhichOneof("body")
            if body == "ready":
                break
            if body == "load_failed":
                reason = printable(message.load_failed.reason, 1024)
                self._log.error("plugin failed to load", reason=reason)
                runner.report(lc.LoadFailed(self._generation, reason))
                return
            self._side_message(message)
        else:
            raise _SessionEndedError
        runner.report(lc.Ready(self._generation))
        runner.wake.set()
        sender = asyncio.ensure_future(self._send(context))
        try:
            async for message in requests:
                worker.heard()
                if await self._receive(message):
                    return
            if not sender.done():  # the worker hung up on us
                raise _SessionEndedError
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(self, context: Context) -> None:
        delivery, wake = self._delivery, self._runner.wake
        while True:
            await wake.wait()
            wake.clear()
            while (batch := delivery.next_batch(time.monotonic())) is not None:
                await context.write(batch.frame)
            if self._runner.draining and delivery.drained:
                await context.write(HostMessage(stop=Stop()).SerializeToString())
                return

    async def _receive(self, message: WorkerMessage) -> bool:
        """Handle one message of a running session; True when the session is over."""
        body = message.WhichOneof("body")
        if body == "result":
            result = message.result
            answered = self._delivery.answered(result.batch_id, result.processed, time.monotonic())
            await self._runner.results.processed(answered, list(result.findings), result.errors)
        elif body == "stopped":
            self._runner.results.at_stop(list(message.stopped.findings))
            return True
        else:
            self._side_message(message)
        return False

    def _side_message(self, message: WorkerMessage) -> None:
        body = message.WhichOneof("body")
        if body == "log":
            # Cut, escaped and rate-limited here, whatever the worker's own handler did.
            limit = self._runner.log_limit
            if not limit.allow(time.monotonic()):
                return
            suppressed = limit.take_suppressed()
            record = message.log
            level = min(max(record.level, 10), 50)
            log.log(
                level,
                printable(record.message),
                plugin=self._runner.name,
                pid=self._worker.pid,
                logger=printable(record.logger, 128),
                **({"suppressed_before": suppressed} if suppressed else {}),
            )
        elif body != "heartbeat":
            raise ProtocolError(self._runner.name, f"sent {body!r} where it was not expected")
