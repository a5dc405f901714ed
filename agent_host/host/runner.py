"""One plugin's runner: the task that carries out what its lifecycle decides.

A runner outlives the worker processes it starts. Everything that happens to a worker (it was
spawned, became ready, exited; a deadline passed; a stop was asked) becomes an input in the
runner's inbox. One task per plugin takes them in order, asks the ``Lifecycle`` what to do, and
does it: spawn, terminate, schedule a restart, quarantine, settle the accounts. No other code
changes a plugin's phase.

Two kinds of task feed the inbox and never decide anything: the watcher of each process (it
waits for the exit, kills what the worker left behind, and reports ``Exited``), and the gRPC
session (``conversation.py``), which owns the delivery while a worker is connected and reports
``Ready``, ``LoadFailed`` and protocol violations. The supervisor's watchdog loop reports
deadlines and resource limits through ``check`` and ``sample_resources``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import grpc
import psutil
import structlog

from agent_host.host import lifecycle as lc
from agent_host.host.cgroups import Cgroups
from agent_host.host.child import Child
from agent_host.host.config import HostConfig
from agent_host.host.conversation import Conversation
from agent_host.host.delivery import PIECE_ID_BASE, Answered, Delivery
from agent_host.host.fanout import Group
from agent_host.host.findings import FindingPipeline, Source
from agent_host.host.limits import DATA_HEADROOM_MIB, Deadlines
from agent_host.host.manifest import Manifest
from agent_host.host.output import relay_output
from agent_host.host.poison import Attribution, PoisonBudget
from agent_host.host.restart import RestartPolicy
from agent_host.host.sandbox import WorkerSandbox
from agent_host.host.session import SessionServer
from agent_host.host.spawn import Spawner, WorkerProcess
from agent_host.host.stats import PluginStats
from agent_host.host.store import Quarantine, StateStore
from agent_host.host.untrusted import RateLimit
from agent_host.host.updates.content import Content
from agent_host.host.updates.shadow import ShadowTrial
from agent_host.protocol import EventBatch, Finding, WorkerMessage

log = structlog.get_logger("agent_host")

#: Inputs waiting for the runner; a handful per worker generation by construction (faults are
#: reported once per generation), so this bound is never reached by a working host.
_INBOX_SIZE: Final = 256
#: How long a stopped worker's output may take to reach its end of file.
_RELAY_DRAIN_S: Final = 1.0
#: Log records of one plugin per second, on average, that reach the host's log.
LOG_RECORDS_PER_S: Final = 200.0


class PluginRunner:
    """One plugin: its lifecycle, its current worker process and session, and its accounts."""

    def __init__(
        self,
        manifest: Manifest,
        group: Group,
        *,
        content: Content,
        signer: str = "",
        config: HostConfig,
        sandbox: WorkerSandbox,
        pipeline: FindingPipeline,
        restart_policy: RestartPolicy,
        store: StateStore,
        spawner: Spawner,
        quarantine: Quarantine | None = None,
        cgroups: Cgroups | None = None,
        key: str | None = None,
    ) -> None:
        self.manifest = manifest
        #: The content its workers load (a read-only copy, as measured), and who signed it.
        self.content = content
        self.signer = signer
        #: How the group's backlog knows this runner: the plugin's name, and after a reload
        #: that replaced a version, name#N, so that old and new are owed different batches.
        self.key = key or manifest.name
        #: Why the plugin was taken out by a reload ("" while it is in).
        self.retired = ""
        #: The shadow trial this runner is in (as the current version or the candidate).
        self.trial: ShadowTrial[PluginRunner] | None = None
        #: Told of each failure of this version (a restart to come, a quarantine, a failure
        #: to load) before the runner acts on it; True means the supervisor took it in hand
        #: (a shadow rolled back, a last known good brought back): no restart follows.
        self.on_failure: Callable[[PluginRunner, str], bool] | None = None
        self.group = group
        self.stats = PluginStats()
        self._config = config
        self.sandbox = sandbox
        self._server: SessionServer | None = None
        self._pipeline = pipeline
        self._store = store
        self._spawner = spawner
        self._quarantine = quarantine
        self._cgroups = cgroups
        self._log = log.bind(plugin=manifest.name)
        self.life = lc.Lifecycle(
            restart_policy, quarantine_level=quarantine.level if quarantine else 0
        )
        self.delivery = Delivery(self.key, group, config.window, self.stats)
        self._budget = PoisonBudget(
            per_hour=config.poison_per_hour,
            max_share=config.poison_max_share,
            min_letters=config.poison_min_letters,
        )
        self._deadlines = Deadlines(
            config.start_timeout_s, config.heartbeat_timeout_s, manifest.limits.batch_deadline_s
        )
        self._source = Source(
            manifest.name,
            manifest.version,
            content.measurement,
            signer,
            manifest.limits.max_findings_per_event,
            self.stats,
            self.delivery.was_given,
        )

        #: The plugin's log records reach the host's log at this rate at most.
        self.log_limit = RateLimit(LOG_RECORDS_PER_S)
        self._inbox: asyncio.Queue[lc.Input] = asyncio.Queue(_INBOX_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The tasks relaying a worker's stdout and stderr: they end at the pipe's end of file.
        self._relays: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        #: Set after every input the runner has handled (stop() waits on it).
        self._handled = asyncio.Event()
        self._draining = False
        #: backlog.appended when the plugin stopped being owed events; None while it is owed.
        self._gave_up_at: int | None = None

        # Per worker (generation).
        self.child: Child | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._last_heard = 0.0
        self._fault_reported = 0  # the generation a fault was last reported for
        self._probation_reported = 0  # the generation whose probation was reported served
        self._wake = asyncio.Event()
        group.backlog.subscribers.add(self.key)
        group.backlog.on_append(self._wake.set)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def validating(self) -> bool:
        """Whether its workers run in a validation host (and fail on content they cannot use)."""
        return self._config.validating

    @property
    def phase(self) -> lc.Phase:
        return self.life.phase

    @property
    def reason(self) -> str:
        return self.life.reason

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def process(self) -> WorkerProcess | None:
        return self.child.process if self.child else None

    @property
    def inflight(self) -> int:
        """Batches sent to the worker and not yet answered."""
        return len(self.delivery.inflight)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the runner's loop ----------------------------------------------------------------

    def start(self) -> None:
        """Begin: spawn the first worker, or sit out a quarantine from an earlier run."""
        q = self._quarantine
        if q is not None and q.until > time.time():
            retry = q.until - time.time()
            first = self.life.begin_quarantined(
                f"quarantined since an earlier run: {q.reason} "
                f"(lift with: agent-host plugins release {self.name})",
                retry,
            )
        else:
            if q is not None:
                self.life.on_probation = True
                self._log.warning("retrying a quarantined plugin on probation", level=q.level)
            first = self.life.begin()
        self._task = asyncio.ensure_future(self._run(first))

    def _feed(self, event: lc.Input) -> None:
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:  # cannot happen by construction; say so loudly if it does
            self._log.error("runner inbox full; input dropped", input=type(event).__name__)

    async def _run(self, first: list[lc.Action]) -> None:
        await self._carry_out(first)
        while True:
            event = await self._inbox.get()
            try:
                await self._take(event)
            except Exception:  # a host bug must not silently end this plugin's supervision
                self._log.exception("host bug: input not handled", input=type(event).__name__)
                self._handled.set()

    async def _take(self, event: lc.Input) -> None:
        if isinstance(event, lc.Exited) and event.generation == self.life.generation:
            event = await self._account_for_exit(event)
        try:
            actions = self.life.handle(event, time.monotonic())
        except lc.IllegalTransition as exc:
            self._log.error("host bug: input ignored", error=str(exc))
            actions = []
        await self._carry_out(actions)

    async def _carry_out(self, actions: list[lc.Action]) -> None:
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            try:
                follow = await self._do(action)
            except Exception:  # a host bug must not silently stop this plugin's supervision
                self._log.exception("host bug: action failed", action=type(action).__name__)
                continue
            if follow is not None:
                pending.extend(self.life.handle(follow, time.monotonic()))
        if self.life.phase not in (lc.Phase.SPAWNING, lc.Phase.STARTING):
            self._started.set()
        self._handled.set()

    async def _do(self, action: lc.Action) -> lc.Input | None:
        """Carry out one action; return the input it produced at once, if any."""
        match action:
            case lc.Spawn(generation=generation):
                return await self._spawn(generation)
            case lc.Terminate(verdict=verdict):
                self._terminate(verdict)
            case lc.Kill(verdict=verdict):
                self._log.error("killing worker", cause=verdict.cause, reason=verdict.detail)
                self._signal_group(signal.SIGKILL)
            case lc.Drain():
                self._draining = True
                self._wake.set()
            case lc.ScheduleRestart(delay_s=delay, cause=cause):
                self.stats.restarts[cause] += 1
                if not self._taken_in_hand(f"{cause}: {self.life.reason}"):
                    self._schedule(delay)
            case lc.Quarantine(reason=reason, level=level, retry_in_s=retry):
                self._persist_quarantine(reason, level, retry)
                if not self.retired:  # a retired version is not tried again in this run
                    self._schedule(retry)
            case lc.Release():
                self._host_write(
                    "release quarantine", self._store.release, self.name, self.manifest.version
                )
                self._log.info("probation passed; quarantine lifted")
            case lc.Settle():
                if self.life.phase in (lc.Phase.QUARANTINED, lc.Phase.FAILED):
                    self._taken_in_hand(self.life.reason)
                await self._settle()
        return None

    def _taken_in_hand(self, why: str) -> bool:
        """Tell the supervisor of a failure; whether it took it in hand."""
        if self.retired or self.on_failure is None or self.life.generation == 0:
            return False
        return self.on_failure(self, why)

    def hand_over(self, successor: PluginRunner) -> None:
        """Give every batch this version still owes to ``successor`` (another version of the
        plugin, in the same group), which processes them instead."""
        moved = self.group.backlog.hand_over(self.key, successor.key)
        self.stats.handed_over += moved - self.delivery.poison.abandon()
        successor.delivery.rewind()

    def _schedule(self, delay: float) -> None:
        """Feed BackoffElapsed for the current generation after ``delay`` seconds."""
        generation = self.life.generation

        async def later() -> None:
            await asyncio.sleep(delay)
            self._feed(lc.BackoffElapsed(generation))

        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._background(later())

    def _host_write(self, what: str, write: Any, *args: Any, **kwargs: Any) -> None:
        """A write to the state store; its failure is the host's, logged, never the plugin's."""
        try:
            write(*args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            self.stats.state_errors += 1
            self._log.error("could not write state", what=what, error=str(exc))

    def _persist_quarantine(self, reason: str, level: int, retry_in: float) -> None:
        if self._quarantine is not None and self.life.generation == 0:
            return  # from an earlier run: already persisted
        self._host_write(
            "quarantine",
            self._store.quarantine,
            self.name,
            self.manifest.version,
            reason,
            level=level,
            retry_in_s=retry_in,
        )
        self._log.error(
            "plugin quarantined", reason=reason, level=level, retry_on_probation_in_s=retry_in
        )

    async def _settle(self) -> None:
        """The plugin is owed nothing more for now: count what it will never process."""
        backlog = self.group.backlog
        missed = await backlog.unsubscribe(self.key)
        missed -= self.delivery.poison.abandon()
        self._gave_up_at = backlog.appended
        self.stats.undelivered += missed
        phase = self.life.phase
        if phase is not lc.Phase.STOPPED or missed:
            self._log.error(
                "plugin stopped",
                state=phase.value,
                reason=self.life.reason,
                undelivered_events=missed,
            )

    def settle(self) -> None:
        """Count as undelivered what the group was handed after this plugin gave up (a plugin
        a reload took out was owed nothing after that)."""
        if self._gave_up_at is not None and not self.retired:
            self.stats.undelivered += self.group.backlog.appended - self._gave_up_at
            self._gave_up_at = self.group.backlog.appended

    # -- the process ----------------------------------------------------------------------

    async def _spawn(self, generation: int) -> lc.Input:
        if self._gave_up_at is not None:  # back from a quarantine served in this run
            self.settle()
            self._gave_up_at = None
            self.group.backlog.subscribers.add(self.key)
            self.delivery.resume()
        try:
            await self._serve_sessions()
            child = await Child.start(
                self._spawner, self.sandbox, self.manifest, self._cgroups, self._log
            )
        except OSError as exc:
            self._log.error("worker could not be started", error=str(exc))
            return lc.SpawnFailed(generation, str(exc))
        self.child = child
        self._log = log.bind(plugin=self.name, pid=child.pid)
        self._last_heard = time.monotonic()
        self._log.debug("worker spawned")
        proc = child.process
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                self._relays.add(self._background(relay_output(stream, self.name, proc.pid, name)))
        self._background(self._watch(child, generation))
        return lc.Spawned(generation, child.pid)

    async def _serve_sessions(self) -> None:
        """Open this plugin's own session socket, once (its folder is its workers' alone)."""
        if self._server is not None:
            return
        server = SessionServer(self.sandbox.socket_path, self._claim)
        try:
            await server.start()
            self.sandbox.secure_socket()
        except (OSError, RuntimeError) as exc:
            await server.stop(0)
            raise OSError(f"cannot serve {self.sandbox.socket_path}: {exc}") from exc
        self._server = server

    async def close_sessions(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    @property
    def socket_path(self) -> Path:
        return self.sandbox.socket_path

    @property
    def refused_sessions(self) -> int:
        return self._server.refused if self._server is not None else 0

    def _claim(self, worker_id: str, token: bytes) -> PluginRunner | None:
        return self if self.claim(worker_id, token) else None

    def claim(self, worker_id: str, token: bytes) -> bool:
        """Whether ``token`` is the current spawn's secret (which opens one session only)."""
        return self.child is not None and self.child.claim(worker_id, token)

    def _signal_group(self, signum: signal.Signals) -> None:
        if self.child is not None:
            self.child.signal_group(signum)

    def _terminate(self, verdict: lc.Verdict) -> None:
        """SIGTERM the worker's group, SIGKILL after the grace period."""
        child = self.child
        if child is None or not child.running:
            return
        self._log.error("stopping worker", cause=verdict.cause, reason=verdict.detail)
        child.signal_group(signal.SIGTERM)
        self._background(self._escalate(child))

    async def _escalate(self, child: Child) -> None:
        if await child.kill_after(self._config.kill_grace_s):
            self._log.warning(
                "worker ignored SIGTERM; killing it", grace_s=self._config.kill_grace_s
            )

    def kill_now(self) -> None:
        """SIGKILL the worker at once, outside the lifecycle (the host is aborting)."""
        self.life.death = self.life.death or lc.Verdict("signal", "host aborted")
        self._signal_group(signal.SIGKILL)

    async def _watch(self, child: Child, generation: int) -> None:
        exit = await child.reap()
        if exit.leftovers:
            self._log.warning("killed what the worker left behind", processes=exit.leftovers)
        if exit.oom_killed and self.life.death is None:  # the plugin's, not the outside's
            limit = self.manifest.limits.memory_mb + DATA_HEADROOM_MIB
            verdict = lc.Verdict(
                "memory", f"memory {limit} MiB (cgroup, memfd and tmpfs pages included) reached"
            )
            self._feed(lc.LimitExceeded(generation, verdict))
        if self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session_task
        self._feed(lc.Exited(generation, exit.returncode))

    async def _account_for_exit(self, exited: lc.Exited) -> lc.Exited:
        """Settle what the dead worker held, and say whose fault its death was."""
        phase = self.life.phase
        if phase not in (lc.Phase.STARTING, lc.Phase.RUNNING):
            self.delivery.rewind()  # nothing is charged to what it held while stopping
            verdict = self.life.verdict_for(exited.returncode)
            if phase is lc.Phase.DRAINING and exited.returncode != 0:
                self._log.warning("worker ended badly while stopping", reason=verdict.detail)
            return exited
        verdict = self.life.verdict_for(exited.returncode)
        if verdict.cause == lc.OPERATOR:  # the host's own doing: nothing it held is charged
            self.delivery.rewind()
            self._log.info("worker restarted by the operator")
            return lc.Exited(exited.generation, exited.returncode, lc.Blame.HOST)
        killed_from_outside = self.life.death is None and exited.returncode == -signal.SIGKILL
        blame = lc.Blame.OUTSIDE if killed_from_outside else lc.Blame.PLUGIN
        in_flight, attribution = self.delivery.lost(blame, exited.generation)
        self._log.error(
            "worker died",
            cause=verdict.detail,
            in_flight_events=in_flight,
            blame=attribution.blame.value,
        )
        spent = await self._apply(attribution, verdict)
        return lc.Exited(
            exited.generation, exited.returncode, attribution.blame, spent, attribution.forgive
        )

    async def _apply(self, attribution: Attribution, verdict: lc.Verdict) -> str:
        """Act on an attribution; return why the poison budget is spent, if it is."""
        spent = ""
        if attribution.suspect is not None:
            suspect = attribution.suspect
            self._log.warning(
                "isolating a poison event",
                batch_events=len(suspect),
                first_seq=suspect.seqs[0],
                last_seq=suspect.seqs[-1],
            )
        if attribution.dead_letter is not None:
            piece = attribution.dead_letter
            event = EventBatch.FromString(piece.records[0]).events[0]
            self._host_write(
                "dead letter",
                self._store.add_dead_letter,
                self.name,
                self.manifest.version,
                piece.seqs[0],
                verdict.detail,
                event.SerializeToString(),
            )
            self.stats.dead_lettered += 1
            self._log.error("event dead-lettered", seq=piece.seqs[0], failure=verdict.detail)
            spent = self._budget.dead_letter(time.monotonic())
        if attribution.finished is not None:
            await self.group.backlog.done(self.key, attribution.finished)
            self._log.info("isolation finished", batch_events=len(attribution.finished))
        return spent

    # -- what the supervisor's watchdog reports -------------------------------------------

    def check(self, now: float) -> None:
        """Deadlines (a batch taking too long, an idle worker gone silent, a slow start), and a
        probation served."""
        life = self.life
        if self.process is None or life.death is not None:
            return
        generation = life.generation
        if self._fault_reported == generation:
            return
        overdue = self._deadlines.overdue(
            generation,
            now,
            phase=life.phase,
            last_heard=self._last_heard,
            head=self.delivery.head(),
            head_since=self.delivery.head_since,
        )
        if overdue is not None:
            self._fault_reported = generation
            self._feed(overdue)
            return
        if (
            life.on_probation
            and self._probation_reported != generation
            and life.phase is lc.Phase.RUNNING
            and life.running_since is not None
            and now - life.running_since >= life.policy.probation_s
        ):
            self._probation_reported = generation
            self._feed(lc.ProbationPassed(generation))

    def sample_resources(self, now: float, descendants: list[psutil.Process]) -> None:
        """Measure the worker against its limits (the supervisor calls this periodically)."""
        life = self.life
        monitor = self.child.monitor if self.child else None
        if monitor is None or life.death is not None or life.phase is not lc.Phase.RUNNING:
            return
        monitor.set_descendants(descendants)
        verdict = monitor.sample(now, idle=self.delivery.idle)
        self.stats.peak_rss_mib = max(self.stats.peak_rss_mib, monitor.peak_rss_mib)
        if verdict is not None and self._fault_reported != life.generation:
            self._fault_reported = life.generation
            self._feed(lc.LimitExceeded(life.generation, verdict))

    # -- what the session reports ----------------------------------------------------------

    async def converse(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None:
        """Run the authenticated session with the current worker until it ends."""
        self._session_task = asyncio.current_task()
        await Conversation(self, self.life.generation).run(requests, context)

    def report(self, event: lc.Input) -> None:
        """An input for the runner (from the session, the watchdog, or a timer)."""
        self._feed(event)

    def heard(self) -> None:
        """The worker sent something: it is alive (heartbeats are judged by this)."""
        self._last_heard = time.monotonic()

    @property
    def wake(self) -> asyncio.Event:
        """Set when there may be something to send: a new batch, a result, a stop."""
        return self._wake

    @property
    def draining(self) -> bool:
        """Whether the worker is to be stopped once it has everything it is owed."""
        return self._draining

    async def processed(self, answered: Answered, findings: list[Finding], errors: int) -> None:
        """Account for a batch the worker processed, and its findings."""
        batch = answered.batch
        self.stats.batch_latency.observe(time.monotonic() - batch.created)
        if self.trial is not None:
            findings = self.trial.emitted(self, batch.seqs, findings)
        self._pipeline.accept(self._source, findings)
        self.stats.processed += len(batch)
        self.stats.errors += errors
        self._budget.processed(len(batch))
        finished = answered.finished
        if finished is not None:
            await self.group.backlog.done(self.key, finished)
            if batch.batch_id >= PIECE_ID_BASE:
                self._log.info("isolation finished", batch_events=len(finished))
        self._wake.set()

    def findings_at_stop(self, findings: list[Finding]) -> None:
        """The findings on_stop reported."""
        if self.trial is not None:
            findings = self.trial.emitted(self, None, findings)
        self._pipeline.accept(self._source, findings)

    # -- shutdown -------------------------------------------------------------------------

    def release_now(self) -> None:
        """The operator lifted the quarantine: start again at once, on probation."""
        self._host_write(
            "release quarantine", self._store.release, self.name, self.manifest.version
        )
        if self._timer is not None:
            self._timer.cancel()
        self._feed(lc.BackoffElapsed(self.life.generation))

    def restart_now(self) -> None:
        """The operator asked for a fresh worker on the same content: the current one is
        stopped, and what it held goes to the next, which starts at once. Not a failure: it
        is counted among the restarts (cause "operator") but never toward a quarantine."""
        if self.phase is lc.Phase.BACKING_OFF and self._timer is not None:
            self._timer.cancel()  # the restart it waits for is now
        self._feed(lc.RestartRequested(self.life.generation))

    def retire(self, reason: str) -> None:
        """Owe this plugin no batch from now on; it finishes those it holds, then stops.

        The caller flushes the group first, so that the cut is between two batches: every
        event before it is this plugin's to process, every event after it its successor's.
        """
        self.retired = reason
        self.group.backlog.subscribers.discard(self.key)
        if self._timer is not None:  # a restart or a probation to come: not for a retired one
            self._timer.cancel()
        self._feed(lc.StopRequested(self.life.generation))

    async def wait_started(self) -> None:
        """Return once the first worker is running, or has failed to become so."""
        await self._started.wait()

    async def stop(self, timeout: float) -> None:
        """Let the worker finish what it holds, run on_stop, and exit; kill it if it will not."""
        generation = self.life.generation
        self._feed(lc.StopRequested(generation))
        try:
            await asyncio.wait_for(self._stopped(), timeout)
        except TimeoutError:
            self._log.warning("worker did not stop in time; killing it", limit_s=timeout)
            self._feed(
                lc.DeadlineExceeded(
                    self.life.generation, lc.Verdict("hang", "did not stop in time")
                )
            )
            await self._stopped()
        await self.close()

    async def _stopped(self) -> None:
        """Wait until the plugin is settled, with no input left to handle."""
        while not (self.life.phase.final and self._inbox.empty()):
            self._handled.clear()
            await self._handled.wait()

    async def close(self) -> None:
        """Cancel the runner's own tasks (after stop, or when the host aborts).

        The output relays are let run to their pipe's end of file (the worker is gone, so it
        comes at once): a relay cancelled before it would leave the pipe open.
        """
        self._relays = {t for t in self._relays if not t.done()}
        if self._relays:
            await asyncio.wait(self._relays, timeout=_RELAY_DRAIN_S)
        for task in [self._task, self._timer, *self._tasks]:
            if task is not None and not task.done() and task is not self._session_task:
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if self._task is not None:
                await self._task
