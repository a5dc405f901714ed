"""One worker's gRPC session, from the host's side.

It sends Start, waits for Ready (or LoadFailed), then sends batches as the delivery window
allows and takes their results, until the runner drains it (Stop, then Stopped). While it runs
it owns the plugin's delivery; it decides nothing about the worker's life: what it sees (ready,
load failed, a protocol violation) goes to the runner's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import grpc
import structlog

from agent_host.errors import ProtocolError
from agent_host.host import lifecycle as lc
from agent_host.host.untrusted import printable
from agent_host.protocol import HostMessage, Start, Stop, WorkerMessage

if TYPE_CHECKING:
    from agent_host.host.runner import PluginRunner

log = structlog.get_logger("agent_host")

#: How long a worker that hung up its session has to exit by itself before it is killed.
SESSION_END_GRACE_S: Final = 0.5

Context = grpc.aio.ServicerContext[WorkerMessage, bytes]


class _SessionEndedError(Exception):
    """The worker's side of the session ended without a goodbye."""


class Conversation:
    """The session of worker ``generation`` of ``runner``'s plugin."""

    def __init__(self, runner: PluginRunner, generation: int) -> None:
        self._runner = runner
        self._generation = generation
        self._delivery = runner.delivery
        self._log = log.bind(plugin=runner.name, pid=runner.pid)

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
        proc = self._runner.process
        if proc is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), SESSION_END_GRACE_S)
        except TimeoutError:
            self._log.warning("worker closed its session but kept running; killing it")
            verdict = lc.Verdict("protocol", "closed its session but kept running")
            self._runner.report(lc.ProtocolViolated(self._generation, verdict))

    async def _converse(self, requests: AsyncIterator[WorkerMessage], context: Context) -> None:
        runner = self._runner
        manifest = runner.manifest
        await context.write(
            HostMessage(
                start=Start(
                    plugin_name=manifest.name,
                    plugin_dir=str(runner.content.copy),
                    entrypoint=manifest.entrypoint,
                    config_json=manifest.config_json,
                    validating=runner.validating,
                )
            ).SerializeToString()
        )
        async for message in requests:
            runner.heard()
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
                runner.heard()
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
            await self._runner.processed(answered, list(result.findings), result.errors)
        elif body == "stopped":
            self._runner.findings_at_stop(list(message.stopped.findings))
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
                pid=self._runner.pid,
                logger=printable(record.logger, 128),
                **({"suppressed_before": suppressed} if suppressed else {}),
            )
        elif body != "heartbeat":
            raise ProtocolError(self._runner.name, f"sent {body!r} where it was not expected")
