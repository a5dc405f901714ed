"""One plugin's runner: the task that carries out what its lifecycle decides.

A runner outlives the worker processes it starts. Everything that happens to a worker (it was
spawned, became ready, exited; a deadline passed; a stop was asked) becomes an input in the
runner's inbox. One task per plugin takes them in order, asks the ``Lifecycle`` what to do, and
does it: spawn, terminate, schedule a restart, quarantine, settle the accounts. No other code
changes a plugin's phase.

What the runner does not hold, it delegates: one worker process and its tasks are a
``WorkerGeneration`` (``generation.py``), what is written down about the plugin is its
``PluginRecords`` (``records.py``), the gRPC session is a ``Conversation``
(``conversation.py``), which reports ``Ready``, ``LoadFailed`` and protocol violations, and the
supervisor's watchdog reports deadlines and resource limits through ``check`` and
``sample_resources``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final

import grpc
import psutil
import structlog

from agent_host.host import lifecycle as lc
from agent_host.host.child import Child, Exit
from agent_host.host.conversation import Conversation, start_message
from agent_host.host.delivery import Delivery
from agent_host.host.facilities import Facilities
from agent_host.host.fanout import Group
from agent_host.host.findings import Source
from agent_host.host.generation import WorkerGeneration
from agent_host.host.limits import DATA_HEADROOM_MIB, Deadlines
from agent_host.host.manifest import Manifest
from agent_host.host.poison import PoisonBudget
from agent_host.host.postmortem import Postmortem
from agent_host.host.records import PluginRecords
from agent_host.host.results import Results
from agent_host.host.sandbox import WorkerSandbox
from agent_host.host.session import PluginSessions
from agent_host.host.stats import PluginStats
from agent_host.host.store import Quarantine
from agent_host.host.untrusted import RateLimit
from agent_host.host.updates.content import Content
from agent_host.host.updates.shadow import ShadowTrial
from agent_host.protocol import WorkerMessage

log = structlog.get_logger("agent_host")

#: Inputs waiting for the runner; a handful per worker generation by construction (faults are
#: reported once per generation), so this bound is never reached by a working host.
_INBOX_SIZE: Final = 256
#: Log records of one plugin per second, on average, that reach the host's log.
LOG_RECORDS_PER_S: Final = 200.0


class PluginRunner:
    """One plugin version: its lifecycle, its current worker generation, and its accounts."""

    def __init__(
        self,
        manifest: Manifest,
        group: Group,
        facilities: Facilities,
        *,
        content: Content,
        sandbox: WorkerSandbox,
        signer: str = "",
        quarantine: Quarantine | None = None,
        key: str | None = None,
    ) -> None:
        self.manifest: Final = manifest
        #: The content its workers load (a read-only copy, as measured), and who signed it.
        self.content: Final = content
        self.signer: Final = signer
        self.sandbox: Final = sandbox
        self.group: Final = group
        #: How the group's backlog knows this runner: the plugin's name, and after a reload
        #: that replaced a version, name#N, so that old and new are owed different batches.
        self.key: Final = key or manifest.name
        #: Why the plugin was taken out by a reload ("" while it is in).
        self.retired = ""
        #: Told of each failure of this version (a restart to come, a quarantine, a failure
        #: to load) before the runner acts on it; True means the supervisor took it in hand
        #: (a shadow rolled back, a last known good brought back): no restart follows.
        self.on_failure: Callable[[PluginRunner, str], bool] | None = None
        self.stats: Final = PluginStats()
        #: The current worker generation (None before the first spawn).
        self.worker: WorkerGeneration | None = None
        #: The plugin's log records reach the host's log at this rate at most.
        self.log_limit: Final = RateLimit(LOG_RECORDS_PER_S)
        self._facilities: Final = facilities
        self._config = facilities.config
        self._quarantine = quarantine
        self._log = log.bind(plugin=manifest.name)
        self._records: Final = PluginRecords(
            facilities.store, manifest.name, manifest.version, self.stats, self._log
        )
        self.life: Final = lc.Lifecycle(
            facilities.restart_policy, quarantine_level=quarantine.level if quarantine else 0
        )
        self.delivery: Final = Delivery(self.key, group, self._config.window, self.stats)
        budget = PoisonBudget(
            per_hour=self._config.poison_per_hour,
            max_share=self._config.poison_max_share,
            min_letters=self._config.poison_min_letters,
        )
        self._deadlines: Final = Deadlines(
            self._config.start_timeout_s,
            self._config.heartbeat_timeout_s,
            manifest.limits.batch_deadline_s,
        )
        self._postmortem: Final = Postmortem(self.delivery, budget, self._records, self._log)
        source = Source(
            manifest.name,
            manifest.version,
            content.measurement,
            signer,
            manifest.limits.max_findings_per_event,
            self.stats,
            self.delivery.was_given,
        )
        #: What opens each session: the plugin, its content's copy and its config.
        self.start_message: Final = start_message(manifest, content.copy, self._config.validating)
        self._wake = asyncio.Event()
        self.results: Final = Results(
            self, source, facilities.pipeline, self.delivery, budget, wake=self._wake, log=self._log
        )
        #: The plugin's own session socket, in a folder only its workers' uid may enter.
        self.sessions: Final = PluginSessions(
            sandbox.socket_path, self._claim, sandbox.secure_socket
        )
        self._inbox: asyncio.Queue[lc.Input] = asyncio.Queue(_INBOX_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        #: Set after every input the runner has handled (stop() waits on it).
        self._handled = asyncio.Event()
        self._draining = False
        group.backlog.subscribers.add(self.key)
        group.backlog.on_append(self._wake.set)

    @property
    def trial(self) -> ShadowTrial[PluginRunner] | None:
        """The shadow trial this version is in (as the current version or the candidate)."""
        return self.results.trial

    @trial.setter
    def trial(self, trial: ShadowTrial[PluginRunner] | None) -> None:
        self.results.trial = trial

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def phase(self) -> lc.Phase:
        return self.life.phase

    @property
    def reason(self) -> str:
        return self.life.reason

    @property
    def pid(self) -> int | None:
        return self.worker.pid if self.worker else None

    @property
    def inflight(self) -> int:
        """Batches sent to the worker and not yet answered."""
        return len(self.delivery.inflight)

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

    def report(self, happened: lc.Input) -> None:
        """An input for the runner (from the session, the watchdog, a worker's exit, a timer)."""
        try:
            self._inbox.put_nowait(happened)
        except asyncio.QueueFull:  # cannot happen by construction; say so loudly if it does
            self._log.error("runner inbox full; input dropped", input=type(happened).__name__)

    async def _run(self, first: list[lc.Action]) -> None:
        await self._carry_out(first)
        while True:
            happened = await self._inbox.get()
            try:
                await self._take(happened)
            except Exception:  # a host bug must not silently end this plugin's supervision
                self._log.exception("host bug: input not handled", input=type(happened).__name__)
                self._handled.set()

    async def _take(self, happened: lc.Input) -> None:
        if isinstance(happened, lc.Exited) and happened.generation == self.life.generation:
            happened = await self._postmortem.examine(happened, self.life)
        try:
            actions = self.life.handle(happened, time.monotonic())
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
                if self.worker is not None:
                    self.worker.kill()
            case lc.Drain():
                self._draining = True
                self._wake.set()
            case lc.ScheduleRestart(delay_s=delay, cause=cause):
                self._restart_later(delay, cause)
            case lc.Quarantine(reason=reason, level=level, retry_in_s=retry):
                self._quarantined(reason, level, retry)
            case lc.SetAside(reason=reason, retry_in_s=retry):
                self._log.error("plugin set aside", reason=reason, retry_in_s=round(retry, 1))
                if not self.retired:
                    self._schedule(retry)
            case lc.Release():
                self._records.release()
                self._log.info("probation passed; quarantine lifted")
            case lc.Settle():
                if self.life.phase in (lc.Phase.QUARANTINED, lc.Phase.FAILED):
                    self._taken_in_hand(self.life.reason)
                await self._give_up()
        return None

    def _restart_later(self, delay: float, cause: str) -> None:
        self.stats.restarts[cause] += 1
        if not self._taken_in_hand(f"{cause}: {self.life.reason}"):
            self._schedule(delay)

    def _quarantined(self, reason: str, level: int, retry: float) -> None:
        if self._quarantine is None or self.life.generation != 0:  # else: kept in a past run
            self._records.quarantine(reason, level, retry)
        if not self.retired:  # a retired version is not tried again in this run
            self._schedule(retry)

    def _taken_in_hand(self, why: str) -> bool:
        """Tell the supervisor of a failure; whether it took it in hand."""
        if self.retired or self.on_failure is None or self.life.generation == 0:
            return False
        return self.on_failure(self, why)

    def hand_over(self, successor: PluginRunner) -> None:
        """Give every batch this version still owes to ``successor`` (another version of the
        plugin, in the same group), which processes them instead."""
        self.delivery.hand_over(successor.delivery)

    def _schedule(self, delay: float) -> None:
        """Report BackoffElapsed for the current generation after ``delay`` seconds."""
        generation = self.life.generation

        async def later() -> None:
            await asyncio.sleep(delay)
            self.report(lc.BackoffElapsed(generation))

        self._cancel_timer()
        self._timer = asyncio.ensure_future(later())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def _give_up(self) -> None:
        """The plugin is owed nothing more for now: count what it will never process."""
        missed = await self.delivery.give_up()
        phase = self.life.phase
        if phase is not lc.Phase.STOPPED or missed:
            self._log.error(
                "plugin stopped",
                state=phase.value,
                reason=self.life.reason,
                undelivered_events=missed,
            )

    def count_unowed(self) -> None:
        """Count as undelivered what the group was handed after this plugin gave up (a plugin
        a reload took out was owed nothing after that)."""
        if not self.retired:
            self.delivery.count_unowed()

    # -- the worker -----------------------------------------------------------------------

    async def _spawn(self, generation: int) -> lc.Input:
        self.delivery.take_up()  # back from a quarantine served in this run, if it was
        facilities = self._facilities
        try:
            await self.sessions.open()
            child = await Child.start(
                facilities.spawner, self.sandbox, self.manifest, facilities.cgroups, self._log
            )
        except OSError as exc:
            self._log.error("worker could not be started", error=str(exc))
            return lc.SpawnFailed(generation, str(exc))
        worker = WorkerGeneration(generation, child, self.name, log=self._log, on_exit=self._exited)
        self.worker = worker
        worker.log.debug("worker spawned")
        worker.begin()
        return lc.Spawned(generation, child.pid)

    def _exited(self, worker: WorkerGeneration, exit: Exit) -> None:
        """A worker was reaped: report it (and first, a kill by its cgroup's memory limit)."""
        if exit.oom_killed and self.life.death is None:  # the plugin's, not the outside's
            limit = self.manifest.limits.memory_mb + DATA_HEADROOM_MIB
            verdict = lc.Verdict(
                "memory", f"memory {limit} MiB (cgroup, memfd and tmpfs pages included) reached"
            )
            self.report(lc.LimitExceeded(worker.number, verdict))
        self.report(lc.Exited(worker.number, exit.returncode))

    async def close_sessions(self, grace: float) -> None:
        await self.sessions.close(grace)

    @property
    def refused_sessions(self) -> int:
        return self.sessions.refused

    def _claim(self, worker_id: str, token: bytes) -> PluginRunner | None:
        return self if self.claim(worker_id, token) else None

    def claim(self, worker_id: str, token: bytes) -> bool:
        """Whether ``token`` is the current spawn's secret (which opens one session only)."""
        return self.worker is not None and self.worker.claim(worker_id, token)

    def _terminate(self, verdict: lc.Verdict) -> None:
        """SIGTERM the worker's group, SIGKILL after the grace period."""
        worker = self.worker
        if worker is not None and worker.child.running:
            # An operator's restart is the operator's wish, not a fault: not an error.
            say = worker.log.info if verdict.cause == lc.OPERATOR else worker.log.error
            say("stopping worker", cause=verdict.cause, reason=verdict.detail)
            worker.terminate(self._config.kill_grace_s)

    def kill_now(self) -> None:
        """SIGKILL the worker at once, outside the lifecycle (the host is aborting)."""
        self.life.death = self.life.death or lc.Verdict("signal", "host aborted")
        if self.worker is not None:
            self.worker.kill()

    # -- what the supervisor's watchdog reports -------------------------------------------

    def check(self, now: float) -> None:
        """Deadlines (a batch taking too long, an idle worker gone silent, a slow start), and a
        probation served."""
        if self.worker is not None:
            found = self.worker.judge(now, self.life, self._deadlines, self.delivery)
            if found is not None:
                self.report(found)

    def excuse(self, paused_s: float, now: float) -> None:
        """The host was not running for ``paused_s`` before ``now``: that time counts toward
        no deadline (what was heard since, the host heard in time)."""
        if self.worker is not None:
            self.worker.last_heard = min(now, self.worker.last_heard + paused_s)
        self.delivery.head_since = min(now, self.delivery.head_since + paused_s)

    def sample_resources(self, now: float, descendants: list[psutil.Process]) -> None:
        """Measure the worker against its limits (the supervisor calls this periodically)."""
        if self.worker is not None:
            found = self.worker.measure(now, self.life, self.delivery.idle, descendants)
            self.stats.peak_rss_mib = max(self.stats.peak_rss_mib, self.worker.peak_rss_mib)
            if found is not None:
                self.report(found)

    # -- what the session needs (conversation.Peer) ---------------------------------------

    async def converse(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None:
        """Run the authenticated session with the current worker until it ends."""
        worker = self.worker
        if worker is None:  # cannot be: a session is claimed with the current spawn's secret
            return
        worker.session_task = asyncio.current_task()
        await Conversation(self, worker).run(requests, context)

    @property
    def wake(self) -> asyncio.Event:
        """Set when there may be something to send: a new batch, a result, a stop."""
        return self._wake

    @property
    def draining(self) -> bool:
        """Whether the worker is to be stopped once it has everything it is owed."""
        return self._draining

    # -- the operator's and the supervisor's commands -------------------------------------

    def release_now(self) -> None:
        """The operator lifted the quarantine: start again at once, on probation."""
        self._records.release()
        self._cancel_timer()
        self.report(lc.BackoffElapsed(self.life.generation))

    def restart_now(self) -> None:
        """The operator asked for a fresh worker on the same content: the current one is
        stopped, and what it held goes to the next, which starts at once. Not a failure: it
        is counted among the restarts (cause "operator") but never toward a quarantine."""
        if self.phase in (lc.Phase.BACKING_OFF, lc.Phase.SET_ASIDE):
            self._cancel_timer()  # the restart it waits for is now
        self.report(lc.RestartRequested(self.life.generation))

    def retire(self, reason: str) -> None:
        """Owe this plugin no batch from now on; it finishes those it holds, then stops.

        The caller flushes the group first, so that the cut is between two batches: every
        event before it is this plugin's to process, every event after it its successor's.
        """
        self.retired = reason
        self.group.backlog.subscribers.discard(self.key)
        self._cancel_timer()  # a restart or a probation to come: not for a retired one
        self.report(lc.StopRequested(self.life.generation))

    async def wait_started(self) -> None:
        """Return once the first worker is running, or has failed to become so."""
        await self._started.wait()

    async def stop(self, timeout: float) -> None:
        """Let the worker finish what it holds, run on_stop, and exit; kill it if it will not."""
        self.report(lc.StopRequested(self.life.generation))
        try:
            await asyncio.wait_for(self._stopped(), timeout)
        except TimeoutError:
            self._log.warning("worker did not stop in time; killing it", limit_s=timeout)
            self.report(
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
        """Cancel the runner's own tasks (after stop, or when the host aborts)."""
        if self.worker is not None:
            await self.worker.close()
        for task in (self._task, self._timer):
            if task is not None and not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if self._task is not None:
                await self._task
