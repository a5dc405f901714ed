"""The host's view of one plugin: its manifest, its current worker, its session and counters.

A handle outlives the worker processes it starts: when one dies, the handle accounts for it, and
its replacement resumes from the oldest batch the plugin has not processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import grpc
import structlog

from agent_host import worker as worker_module
from agent_host.config import HostConfig
from agent_host.errors import ProtocolError
from agent_host.fanout import Batch, Group
from agent_host.findings import check
from agent_host.manifest import Manifest
from agent_host.protocol import Finding, HostMessage, Start, Stop, WorkerMessage
from agent_host.restart import RestartPolicy, RestartTracker
from agent_host.stats import PluginStats, State

log = structlog.get_logger("agent_host")

#: Where the worker may find agent_host itself, whether installed or run from a checkout.
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent)
_OUTPUT_LINE_MAX: Final = 4096
_OUTPUT_LINES_PER_S: Final = 200.0

#: How long a worker that hung up its session has to exit by itself before it is killed.
_SESSION_END_GRACE_S: Final = 0.5

FindingsCallback = Callable[["WorkerHandle", list[Finding]], Awaitable[None]]


class _SessionEndedError(Exception):
    """The worker's side of the session ended without a goodbye."""


def describe_exit(returncode: int) -> str:
    """'exit code 3' or 'signal SIGSEGV', for a Popen-style return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def cause_of(returncode: int) -> str:
    """The restart cause counted for an unexpected exit: 'signal' or 'exit'."""
    return "signal" if returncode < 0 else "exit"


class WorkerHandle:
    """One plugin and its (current) worker process."""

    def __init__(
        self,
        manifest: Manifest,
        group: Group,
        *,
        config: HostConfig,
        socket_path: Path,
        on_findings: FindingsCallback,
        restart_policy: RestartPolicy,
    ) -> None:
        self.manifest = manifest
        self.group = group
        self.stats = PluginStats()
        self.state = State.STARTING
        self.reason = ""
        self._config = config
        self._socket_path = socket_path
        self._on_findings = on_findings
        self._restarts = RestartTracker(restart_policy)
        self._log = log.bind(plugin=manifest.name)

        # Per spawn.
        self.worker_id = ""
        self._token = b""
        self.process: asyncio.subprocess.Process | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._running_since: float | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._pending_death_cause = ""

        # Delivery.
        self.cursor = group.backlog.next_id
        self._highest_sent = 0
        self._highest_seq = 0  # on_stop findings may cite any event up to this one
        self.inflight: dict[int, Batch] = {}
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        group.backlog.subscribers.add(manifest.name)
        group.backlog.on_append(self._wake.set)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _spawn_task(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- process life ---------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start a fresh worker process for this plugin (exec, never fork of the host)."""
        self.state = State.STARTING
        self.worker_id = uuid.uuid4().hex
        self._token = secrets.token_bytes(worker_module.TOKEN_BYTES)
        self._ready = asyncio.get_running_loop().create_future()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": _PACKAGE_ROOT,
            "PYTHONUNBUFFERED": "1",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        self.process = await asyncio.create_subprocess_exec(
            # Not "-m agent_host.worker": that would run the module as __main__, a second copy
            # beside the agent_host.worker that plugins import.
            sys.executable,
            "-c",
            "import sys; from agent_host.worker import main; sys.exit(main())",
            "--socket",
            str(self._socket_path),
            "--worker-id",
            self.worker_id,
            "--host-pid",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.manifest.directory,
            env=env,
            start_new_session=True,  # its own process group: killed as one, children included
        )
        assert self.process.stdin is not None
        self.process.stdin.write(self._token)
        await self.process.stdin.drain()
        self.process.stdin.close()
        self._log = log.bind(plugin=self.name, pid=self.process.pid)
        self._log.debug("worker spawned")
        proc = self.process
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                self._spawn_task(self._relay_output(stream, name, proc.pid))
        self._spawn_task(self._watch(proc))
        self._spawn_task(self._start_deadline(proc))

    async def wait_started(self) -> None:
        """Return once the current worker is ready, or has failed to become so."""
        if self._ready is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._ready)

    def claim(self, worker_id: str, token: bytes) -> bool:
        """Whether ``token`` is this spawn's secret; a secret opens one session only."""
        if (
            not self._token
            or worker_id != self.worker_id
            or not secrets.compare_digest(token, self._token)
        ):
            return False
        self._token = b""
        return True

    def kill(self, why: str) -> None:
        """SIGKILL the worker's whole process group (the plugin's children die with it)."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        self._pending_death_cause = self._pending_death_cause or why
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def _start_deadline(self, proc: asyncio.subprocess.Process) -> None:
        await asyncio.sleep(self._config.start_timeout_s)
        if proc is self.process and self.state is State.STARTING and proc.returncode is None:
            self._log.error("worker did not start in time", limit_s=self._config.start_timeout_s)
            self.kill("start timeout")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        if self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session_task
        await self._reap(returncode)

    async def _reap(self, returncode: int) -> None:
        """Account for a worker that has exited, and decide what comes next."""
        lost = list(self.inflight.values())
        self.inflight.clear()
        self.cursor = self.group.backlog.first_pending(self.name)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(False)
        if self.state is State.FAILED:  # the plugin said why it could not load
            await self._give_up(State.FAILED, self.reason)
            return
        if self._stop_requested:
            if returncode != 0:
                self._log.warning(
                    "worker ended badly while stopping",
                    cause=self._pending_death_cause or describe_exit(returncode),
                )
            await self._give_up(State.STOPPED, "")
            return
        how = self._pending_death_cause or describe_exit(returncode)
        cause = {"start timeout": "hang"}.get(
            self._pending_death_cause, self._pending_death_cause or cause_of(returncode)
        )
        self._pending_death_cause = ""
        self._log.error("worker died", cause=how, in_flight_events=sum(len(b) for b in lost))
        delay = self._restarts.record_failure(time.monotonic(), self._running_since)
        self._running_since = None
        if delay is None:
            policy = self._restarts.policy
            await self._give_up(
                State.QUARANTINED,
                f"{policy.burst} failures within {policy.window_s:g}s, last: {how}",
            )
            return
        self.stats.restarts[cause] += 1
        self.state = State.BACKING_OFF
        self.reason = how
        self._spawn_task(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.state is State.BACKING_OFF and not self._stop_requested:
            await self.spawn()

    async def _give_up(self, state: State, reason: str) -> None:
        self.state = state
        self.reason = reason
        missed = await self.group.backlog.unsubscribe(self.name)
        self.stats.undelivered += missed
        if state is not State.STOPPED or missed:
            self._log.error(
                "plugin stopped for good",
                state=state.value,
                reason=reason,
                undelivered_events=missed,
            )
        self._stopped.set()

    async def _relay_output(self, stream: asyncio.StreamReader, name: str, pid: int) -> None:
        """Log the worker's stdout/stderr line by line: bounded lines, bounded rate."""
        out = log.bind(plugin=self.name, pid=pid, stream=name)
        pending = b""
        allowance = _OUTPUT_LINES_PER_S
        last = time.monotonic()
        suppressed = 0
        while chunk := await stream.read(65536):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > _OUTPUT_LINE_MAX:
                lines.append(pending)
                pending = b""
            now = time.monotonic()
            allowance = min(_OUTPUT_LINES_PER_S, allowance + (now - last) * _OUTPUT_LINES_PER_S)
            last = now
            for line in lines:
                if allowance < 1:
                    suppressed += 1
                    continue
                allowance -= 1
                if suppressed:
                    out.warning(
                        "plugin output suppressed",
                        lines=suppressed,
                        limit_per_s=_OUTPUT_LINES_PER_S,
                    )
                    suppressed = 0
                text = line[:_OUTPUT_LINE_MAX].decode("utf-8", "replace").rstrip()
                if len(line) > _OUTPUT_LINE_MAX:
                    text += f" ... ({len(line) - _OUTPUT_LINE_MAX} bytes cut)"
                out.info("plugin output", line=text)
        if suppressed:
            out.warning(
                "plugin output suppressed", lines=suppressed, limit_per_s=_OUTPUT_LINES_PER_S
            )

    # -- the session ----------------------------------------------------------------------

    async def converse(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None:
        """Run the authenticated session with the current worker until it ends."""
        self._session_task = asyncio.current_task()
        try:
            await self._converse(requests, context)
        except ProtocolError as exc:
            self._log.error("worker broke the protocol", error=exc.message)
            self.kill("protocol violation")
        except (
            _SessionEndedError,
            grpc.aio.AioRpcError,
            ConnectionError,
            asyncio.InvalidStateError,
        ):
            # Usually the process is dying and its exit status, not this, is the cause: wait a
            # moment for it. A worker that hangs up and stays alive is killed.
            await self._exit_or_kill("closed its session")

    async def _exit_or_kill(self, why: str) -> None:
        proc = self.process
        if proc is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), _SESSION_END_GRACE_S)
        except TimeoutError:
            self._log.warning("worker closed its session but kept running; killing it")
            self.kill(why)

    async def _converse(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None:
        manifest = self.manifest
        await context.write(
            HostMessage(
                start=Start(
                    plugin_name=manifest.name,
                    plugin_dir=str(manifest.directory),
                    entrypoint=manifest.entrypoint,
                    config_json=manifest.config_json,
                )
            ).SerializeToString()
        )
        async for message in requests:
            body = message.WhichOneof("body")
            if body == "ready":
                break
            if body == "load_failed":
                self.state = State.FAILED
                self.reason = f"failed to load: {message.load_failed.reason}"
                self._log.error("plugin failed to load", reason=message.load_failed.reason)
                return
            self._handle_side_message(message)
        else:
            raise _SessionEndedError
        self.state = State.RUNNING
        self._running_since = time.monotonic()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(True)
        self._wake.set()
        sender = asyncio.ensure_future(self._send(context))
        try:
            async for message in requests:
                if await self._receive(message):
                    return
            if not sender.done():  # the worker hung up on us
                raise _SessionEndedError
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(self, context: grpc.aio.ServicerContext[WorkerMessage, bytes]) -> None:
        backlog = self.group.backlog
        window = self._config.window
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.inflight) < window and self.cursor < backlog.next_id:
                batch = backlog.get(self.cursor)
                self.cursor += 1
                if batch is None or self.name not in batch.pending:
                    continue
                self.inflight[batch.batch_id] = batch
                self.stats.delivered += len(batch)
                if batch.batch_id <= self._highest_sent:
                    self.stats.redelivered += len(batch)
                self._highest_sent = max(self._highest_sent, batch.batch_id)
                self._highest_seq = max(self._highest_seq, batch.seqs[-1])
                await context.write(batch.frame)
            if self._stop_requested and not self.inflight and self.cursor >= backlog.next_id:
                await context.write(HostMessage(stop=Stop()).SerializeToString())
                return

    async def _receive(self, message: WorkerMessage) -> bool:
        """Handle one message of a running session; True when the session is over."""
        body = message.WhichOneof("body")
        if body == "result":
            await self._on_result(message)
        elif body == "stopped":
            findings = list(message.stopped.findings)
            high = self._highest_seq
            await self._accept(findings, None, lambda f: all(i <= high for i in f.event_ids))
            return True
        else:
            self._handle_side_message(message)
        return False

    def _handle_side_message(self, message: WorkerMessage) -> None:
        body = message.WhichOneof("body")
        if body == "log":
            record = message.log
            level = min(max(record.level, 10), 50)
            log.log(level, record.message, plugin=self.name, pid=self.pid, logger=record.logger)
        elif body == "heartbeat":
            pass
        else:
            raise ProtocolError(self.name, f"sent {body!r} where it was not expected")

    async def _on_result(self, message: WorkerMessage) -> None:
        result = message.result
        batch = self.inflight.pop(result.batch_id, None)
        if batch is None:
            raise ProtocolError(
                self.name, f"answered batch {result.batch_id}, which it was not given"
            )
        if result.processed != len(batch):
            raise ProtocolError(
                self.name,
                f"processed {result.processed} of the "
                f"{len(batch)} events in batch {batch.batch_id}",
            )
        limit = self.manifest.limits.max_findings_per_event * len(batch)
        findings = list(result.findings)
        if len(findings) > limit:
            self._log.warning(
                "findings rejected: too many",
                count=len(findings),
                limit=limit,
                batch=batch.batch_id,
            )
            self.stats.rejected_findings += len(findings)
            findings = []
        allowed = set(batch.seqs) if findings else set()
        await self._accept(findings, allowed, None)
        self.stats.processed += len(batch)
        self.stats.errors += result.errors
        await self.group.backlog.done(self.name, batch)
        self._wake.set()

    async def _accept(
        self,
        findings: list[Finding],
        allowed: set[int] | None,
        extra_check: Callable[[Finding], bool] | None,
    ) -> None:
        good: list[Finding] = []
        for finding in findings:
            problem = check(finding, allowed)
            if problem is None and extra_check is not None and not extra_check(finding):
                problem = "refers to events it was never given"
            if problem is not None:
                self.stats.rejected_findings += 1
                self._log.warning("finding rejected", rule=finding.rule[:64], problem=problem)
                continue
            good.append(finding)
        if good:
            await self._on_findings(self, good)

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Let the worker finish what it holds, run on_stop, and exit; kill it if it will not."""
        self._stop_requested = True
        self._wake.set()
        if self.state in (State.FAILED, State.QUARANTINED, State.STOPPED):
            return
        if self.state is State.BACKING_OFF:
            await self._give_up(State.STOPPED, f"stopped while backing off after {self.reason}")
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            self._log.warning("worker did not stop in time; killing it", limit_s=timeout)
            self.kill("stop timeout")
            await self._stopped.wait()
