"""The host's view of one plugin: its manifest, its current worker, its session and counters.

A handle outlives the worker processes it starts. When one dies, however it dies, the handle
records why, restarts it (or quarantines the plugin), and its replacement resumes from the
oldest batch the plugin has not processed. A batch that fails the plugin twice is bisected to
find the event that kills it (see ``isolation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import grpc
import psutil
import structlog

from agent_host import worker as worker_module
from agent_host.config import HostConfig
from agent_host.errors import ProtocolError
from agent_host.fanout import Batch, Group
from agent_host.findings import check
from agent_host.isolation import Isolation, Piece
from agent_host.manifest import Manifest
from agent_host.output import relay_output
from agent_host.protocol import (
    EventBatch,
    Finding,
    HostMessage,
    Start,
    Stop,
    WorkerMessage,
    batch_frame,
    batch_payload,
)
from agent_host.restart import RestartPolicy, RestartTracker
from agent_host.spawner import Spawner, WorkerProcess
from agent_host.state import StateStore
from agent_host.stats import PluginStats, State
from agent_host.watchdog import ResourceMonitor, Verdict, apply_hard_limits

log = structlog.get_logger("agent_host")

#: How long a worker that hung up its session has to exit by itself before it is killed.
_SESSION_END_GRACE_S: Final = 0.5
#: Ids of the sub-batches sent while isolating a poison event; backlog ids never come near.
_PIECE_ID_BASE: Final = 1 << 62

FindingsCallback = Callable[["WorkerHandle", list[Finding]], Awaitable[None]]


class _SessionEndedError(Exception):
    """The worker's side of the session ended without a goodbye."""


def exit_verdict(returncode: int) -> Verdict:
    """Why a worker that exited by itself ended: an exit code or a signal."""
    if returncode == worker_module.EXIT_OUT_OF_MEMORY:
        return Verdict("memory", "out of memory (hard limit reached)")
    if returncode < 0:
        try:
            return Verdict("signal", f"signal {signal.Signals(-returncode).name}")
        except ValueError:
            return Verdict("signal", f"signal {-returncode}")
    return Verdict("exit", f"exit code {returncode}")


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
        store: StateStore,
        spawner: Spawner,
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
        self._store = store
        self._spawner = spawner
        self._log = log.bind(plugin=manifest.name)

        # Per spawn.
        self.worker_id = ""
        self._token = b""
        self.process: WorkerProcess | None = None
        self.monitor: ResourceMonitor | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._running_since: float | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._death: Verdict | None = None  # set by whoever decided this worker must die
        self._last_heard = 0.0

        # Delivery.
        self.cursor = group.backlog.next_id
        self._highest_sent = 0
        self._highest_seq = 0  # on_stop findings may cite any event up to this one
        self.inflight: dict[int, Batch] = {}  # in send order: the first is being processed
        self._head_since = 0.0  # when the worker started on the first in-flight batch
        self._batch_failures: dict[int, int] = {}
        self._isolation: Isolation | None = None
        #: backlog.appended when the plugin stopped being owed events (it failed or quit).
        self._gave_up_at: int | None = None
        self._piece_ids = _PIECE_ID_BASE
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
        self._death = None
        try:
            proc = await self._spawner.spawn(
                ["--socket", str(self._socket_path), "--worker-id", self.worker_id],
                self.manifest.directory,
            )
        except OSError as exc:
            self._log.error("worker could not be started", error=str(exc))
            await self._after_failure(Verdict("exit", f"could not start: {exc}"), count=True)
            return
        self.process = proc
        self._log = log.bind(plugin=self.name, pid=proc.pid)
        try:
            # Before the worker has its secret it runs no plugin code: set its limits now.
            apply_hard_limits(proc.pid, self.manifest.limits)
            self.monitor = ResourceMonitor(proc.pid, self.manifest.limits)
        except psutil.Error as exc:
            self._log.warning("could not set worker limits", error=str(exc))
        assert proc.stdin is not None
        proc.stdin.write(self._token)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        self._log.debug("worker spawned")
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                self._spawn_task(relay_output(stream, self.name, proc.pid, name))
        self._spawn_task(self._watch(proc))

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

    def _signal_group(self, signum: signal.Signals) -> None:
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)

    def kill(self, verdict: Verdict) -> None:
        """SIGKILL the worker's whole process group at once."""
        if self.process is None or self.process.returncode is not None:
            return
        self._death = self._death or verdict
        self._signal_group(signal.SIGKILL)

    def terminate(self, verdict: Verdict) -> None:
        """Stop the worker for ``verdict``: SIGTERM to its group, SIGKILL after a grace period."""
        proc = self.process
        if proc is None or proc.returncode is not None or self._death is not None:
            return
        self._death = verdict
        self._log.error("stopping worker", cause=verdict.cause, reason=verdict.detail)
        self._signal_group(signal.SIGTERM)
        self._spawn_task(self._escalate(proc))

    async def _escalate(self, proc: WorkerProcess) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self._config.kill_grace_s)
        except TimeoutError:
            self._log.warning(
                "worker ignored SIGTERM; killing it", grace_s=self._config.kill_grace_s
            )
            self._signal_group(signal.SIGKILL)

    def check(self, now: float) -> None:
        """Deadlines: a batch taking too long, an idle worker gone silent, a slow start."""
        if self._death is not None or self.process is None:
            return
        if self.state is State.STARTING:
            if now - self._last_heard > self._config.start_timeout_s:
                self.terminate(
                    Verdict("hang", f"did not start within {self._config.start_timeout_s:g}s")
                )
            return
        if self.state is not State.RUNNING:
            return
        deadline = self.manifest.limits.batch_deadline_s
        if self.inflight and now - self._head_since > deadline:
            head = next(iter(self.inflight.values()))
            self.terminate(
                Verdict(
                    "hang",
                    f"batch of {len(head)} events not done within the {deadline:g}s deadline",
                )
            )
        elif not self.inflight and now - self._last_heard > self._config.heartbeat_timeout_s:
            self.terminate(
                Verdict("hang", f"no heartbeat for {self._config.heartbeat_timeout_s:g}s")
            )

    def sample_resources(self, now: float, descendants: list[psutil.Process]) -> None:
        """Measure the worker against its limits (the supervisor calls this periodically)."""
        if self.monitor is None or self._death is not None or self.state is not State.RUNNING:
            return
        self.monitor.set_descendants(descendants)
        verdict = self.monitor.sample(now, idle=not self.inflight)
        self.stats.peak_rss_mib = max(self.stats.peak_rss_mib, self.monitor.peak_rss_mib)
        if verdict is not None:
            self.terminate(verdict)

    async def _watch(self, proc: WorkerProcess) -> None:
        self._last_heard = time.monotonic()
        returncode = await proc.wait()
        # The worker's children die with it, even those it left running.
        self._signal_group(signal.SIGKILL)
        if self.monitor is not None:
            for child in self.monitor.last_descendants():
                with contextlib.suppress(psutil.Error):
                    child.kill()
        if self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session_task
        await self._reap(returncode)

    async def _reap(self, returncode: int) -> None:
        """Account for a worker that has exited, and decide what comes next."""
        lost = list(self.inflight.values())
        in_flight = sum(len(b) for b in lost)
        self.inflight.clear()
        self.cursor = self.group.backlog.first_pending(self.name)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(False)
        if self.state is State.FAILED:  # the plugin said why it could not load
            await self._give_up(State.FAILED, self.reason)
            return
        verdict = self._death or exit_verdict(returncode)
        if self._stop_requested:
            if returncode != 0:
                self._log.warning("worker ended badly while stopping", reason=verdict.detail)
            await self._give_up(State.STOPPED, "")
            return
        self._log.error("worker died", cause=verdict.detail, in_flight_events=in_flight)
        count = await self._attribute(lost, verdict)
        await self._after_failure(verdict, count=count)

    async def _attribute(self, lost: list[Batch], verdict: Verdict) -> bool:
        """Charge the failure to the batches in flight; True if it counts as a failure.

        A worker can die with results for finished batches still unsent, so the batch that
        killed it is not necessarily the oldest in flight: every batch in flight is charged,
        a batch's charges are cleared when it is processed, and the oldest batch charged twice
        is isolated. A failure that narrows down a poison event under isolation is progress,
        not a crash loop: it is not counted, and the next worker starts at once. The dead
        letter it ends in is counted.
        """
        iso = self._isolation
        if iso is not None:
            if not lost:
                return True
            # Under isolation pieces go one at a time: the one in flight is the one that failed.
            poison = iso.failed()
            if poison is not None:
                self._dead_letter(poison, verdict)
            if iso.done:
                await self._finish_isolation()
            return poison is not None
        for batch in lost:
            self._batch_failures[batch.batch_id] = self._batch_failures.get(batch.batch_id, 0) + 1
        suspect = next((b for b in lost if self._batch_failures[b.batch_id] >= 2), None)
        if suspect is not None:
            del self._batch_failures[suspect.batch_id]
            self._isolation = Isolation(suspect)
            self._log.warning(
                "isolating a poison event",
                batch_events=len(suspect),
                first_seq=suspect.seqs[0],
                last_seq=suspect.seqs[-1],
            )
        return True

    def _dead_letter(self, piece: Piece, verdict: Verdict) -> None:
        event = EventBatch.FromString(piece.records[0]).events[0]
        self._store.add_dead_letter(
            self.name,
            self.manifest.version,
            piece.seqs[0],
            verdict.detail,
            event.SerializeToString(),
        )
        self.stats.dead_lettered += 1
        self._log.error("event dead-lettered", seq=piece.seqs[0], failure=verdict.detail)

    async def _finish_isolation(self) -> None:
        iso = self._isolation
        assert iso is not None
        self._isolation = None
        await self.group.backlog.done(self.name, iso.batch)
        self._log.info("isolation finished", batch_events=len(iso.batch))

    async def _after_failure(self, verdict: Verdict, *, count: bool) -> None:
        delay: float | None = 0.0
        if count:
            delay = self._restarts.record_failure(time.monotonic(), self._running_since)
        self._running_since = None
        if delay is None:
            policy = self._restarts.policy
            reason = f"{policy.burst} failures within {policy.window_s:g}s, last: {verdict.detail}"
            self._store.quarantine(self.name, self.manifest.version, reason)
            await self._give_up(State.QUARANTINED, reason)
            return
        self.stats.restarts[verdict.cause] += 1
        self.state = State.BACKING_OFF
        self.reason = verdict.detail
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
        self._gave_up_at = self.group.backlog.appended
        if self._isolation is not None:  # part of that batch is already settled
            missed -= self._isolation.settled
            self._isolation = None
        self.stats.undelivered += missed
        self._batch_failures.clear()
        if state is not State.STOPPED or missed:
            self._log.error(
                "plugin stopped for good",
                state=state.value,
                reason=reason,
                undelivered_events=missed,
            )
        self._stopped.set()

    def settle(self) -> None:
        """Count as undelivered what the group was handed after this plugin gave up."""
        if self._gave_up_at is not None:
            self.stats.undelivered += self.group.backlog.appended - self._gave_up_at
            self._gave_up_at = self.group.backlog.appended

    def set_quarantined(self, reason: str) -> None:
        """Start out quarantined (from an earlier run): never spawned, owed nothing."""
        self.state = State.QUARANTINED
        self.reason = reason
        self.group.backlog.subscribers.discard(self.name)
        self._gave_up_at = self.group.backlog.appended
        self._stopped.set()

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
            self.kill(Verdict("protocol", f"protocol violation: {exc.message}"))
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
        proc = self.process
        if proc is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), _SESSION_END_GRACE_S)
        except TimeoutError:
            self._log.warning("worker closed its session but kept running; killing it")
            self.kill(Verdict("protocol", "closed its session but kept running"))

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
            self._last_heard = time.monotonic()
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
                self._last_heard = time.monotonic()
                if await self._receive(message):
                    return
            if not sender.done():  # the worker hung up on us
                raise _SessionEndedError
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _next_batch(self) -> Batch | None:
        """The next batch to send: a piece of the batch under isolation, or from the backlog."""
        iso = self._isolation
        if iso is not None:
            piece = iso.current()
            if self.inflight or piece is None:
                return None  # pieces go one at a time: a failure must point at one of them
            self._piece_ids += 1
            frame = batch_frame(batch_payload(self._piece_ids, piece.records))
            return Batch(self._piece_ids, frame, piece.records, piece.seqs, set())
        backlog = self.group.backlog
        while len(self.inflight) < self._config.window and self.cursor < backlog.next_id:
            batch = backlog.get(self.cursor)
            self.cursor += 1
            if batch is not None and self.name in batch.pending:
                return batch
        return None

    async def _send(self, context: grpc.aio.ServicerContext[WorkerMessage, bytes]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (batch := self._next_batch()) is not None:
                if not self.inflight:
                    self._head_since = time.monotonic()
                self.inflight[batch.batch_id] = batch
                self.stats.delivered += len(batch)
                if batch.batch_id >= _PIECE_ID_BASE or batch.batch_id <= self._highest_sent:
                    self.stats.redelivered += len(batch)
                else:
                    self._highest_sent = batch.batch_id
                self._highest_seq = max(self._highest_seq, batch.seqs[-1])
                await context.write(batch.frame)
            if (
                self._stop_requested
                and not self.inflight
                and self._isolation is None
                and self.cursor >= self.group.backlog.next_id
            ):
                await context.write(HostMessage(stop=Stop()).SerializeToString())
                return

    async def _receive(self, message: WorkerMessage) -> bool:
        """Handle one message of a running session; True when the session is over."""
        body = message.WhichOneof("body")
        if body == "result":
            await self._on_result(message)
        elif body == "stopped":
            await self._accept(list(message.stopped.findings))
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
        elif body != "heartbeat":
            raise ProtocolError(self.name, f"sent {body!r} where it was not expected")

    async def _on_result(self, message: WorkerMessage) -> None:
        result = message.result
        batch = self.inflight.get(result.batch_id)
        if batch is None or batch is not next(iter(self.inflight.values())):
            raise ProtocolError(
                self.name,
                f"answered batch {result.batch_id}, which it was not given or not given next",
            )
        if result.processed != len(batch):
            raise ProtocolError(
                self.name,
                f"processed {result.processed} of the {len(batch)} "
                f"events in batch {batch.batch_id}",
            )
        del self.inflight[result.batch_id]
        self._head_since = time.monotonic()
        findings = self._within_limit(list(result.findings))
        await self._accept(findings)
        self.stats.processed += len(batch)
        self.stats.errors += result.errors
        if batch.batch_id >= _PIECE_ID_BASE:
            iso = self._isolation
            assert iso is not None
            iso.passed()
            if iso.done:
                await self._finish_isolation()
        else:
            self._batch_failures.pop(batch.batch_id, None)
            await self.group.backlog.done(self.name, batch)
        self._wake.set()

    def _within_limit(self, findings: list[Finding]) -> list[Finding]:
        """Drop the findings of any event that has more than the manifest allows."""
        limit = self.manifest.limits.max_findings_per_event
        if len(findings) <= limit:
            return findings
        per_event = Counter(f.event_ids[0] if f.event_ids else 0 for f in findings)
        flooded = {seq for seq, count in per_event.items() if count > limit}
        if not flooded:
            return findings
        kept = [f for f in findings if (f.event_ids[0] if f.event_ids else 0) not in flooded]
        self.stats.rejected_findings += len(findings) - len(kept)
        self._log.warning(
            "findings rejected: too many for one event",
            events=sorted(flooded)[:5],
            most=max(per_event.values()),
            limit=limit,
        )
        return kept

    def _was_given(self, seq: int) -> bool:
        """Whether this plugin was sent the event ``seq`` (within the group's memory)."""
        return seq <= self._highest_seq and self.group.carried(seq)

    async def _accept(self, findings: list[Finding]) -> None:
        good: list[Finding] = []
        for finding in findings:
            problem = check(finding, self._was_given)
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
            self.kill(Verdict("hang", "did not stop in time"))
            await self._stopped.wait()
