"""The life of one plugin's worker, as phases and a transition table, with no I/O at all.

Every decision about a worker is made here, in one place, the way gunicorn's arbiter and
osquery's ``WatcherRunner`` own theirs: the plugin's runner (``runner.py``) turns what happens to
a worker into an input (it exited, it is ready, a deadline passed, a stop was asked), hands it to
``Lifecycle.handle``, and carries out the actions it gets back (spawn, terminate, restart after a
delay, quarantine, settle the accounts). Nothing else changes a phase, so a test can drive the
whole lifecycle without a process (``tests/host/test_lifecycle.py``), and the table below is the
one the docs print (``docs/lifecycle.md``, checked by a test).

Inputs carry the generation (spawn number) they are about: an input about a worker that has
already been replaced (a deadline noticed just as the process exited) is stale and ignored.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from agent_host.host.restart import RestartPolicy, RestartTracker
from agent_host.protocol import WorkerExit


class Phase(enum.StrEnum):
    """Where a plugin's worker is in its life."""

    SPAWNING = "spawning"  # a process is being asked for
    STARTING = "starting"  # the process runs: connecting, importing the plugin, on_start
    RUNNING = "running"  # processing events
    DRAINING = "draining"  # a stop was asked: finishing what it holds, then on_stop and exit
    BACKING_OFF = "backing_off"  # it failed; a restart is scheduled
    QUARANTINED = "quarantined"  # failed too often; retried on probation after a period
    SET_ASIDE = "set_aside"  # its worker cannot be started; tried again after a period
    FAILED = "failed"  # could not load (import error, on_start raised): not retried
    STOPPED = "stopped"  # stopped on request

    @property
    def final(self) -> bool:
        """Whether the plugin is owed no more events in this phase."""
        return self in _SETTLED


_SETTLED: Final = frozenset({Phase.QUARANTINED, Phase.SET_ASIDE, Phase.FAILED, Phase.STOPPED})


#: The cause of a restart the operator asked for.
OPERATOR: Final = "operator"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a worker ended or must end: a cause counted in the stats and a sentence for the log."""

    cause: str  # exit, signal, hang, memory, cpu, processes, protocol, killed, operator
    detail: str  # "memory 612 MiB > limit 256 MiB"


def exit_verdict(returncode: int) -> Verdict:
    """Why a worker that exited by itself ended: an exit code or a signal."""
    if returncode == WorkerExit.WORKER_EXIT_OUT_OF_MEMORY:
        return Verdict("memory", "out of memory (hard limit reached)")
    if returncode < 0:
        try:
            return Verdict("signal", f"signal {signal.Signals(-returncode).name}")
        except ValueError:
            return Verdict("signal", f"signal {-returncode}")
    return Verdict("exit", f"exit code {returncode}")


class Blame(enum.StrEnum):
    """Whose fault a worker's death was, which decides whether it counts toward quarantine."""

    PLUGIN = "plugin"  # counts toward the crash-loop breaker
    EVENT = "event"  # bisection pinned it on one event (or is narrowing down): restart at once
    OUTSIDE = "outside"  # killed by something other than the host: restart with backoff only
    HOST = "host"  # the host stopped it to restart it (the operator asked): at once, uncounted


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """Something that happened to the worker of generation ``generation``."""

    generation: int


@dataclass(frozen=True, slots=True)
class Spawned(Input):
    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed(Input):
    reason: str


@dataclass(frozen=True, slots=True)
class Ready(Input):
    """The plugin loaded and on_start returned."""


@dataclass(frozen=True, slots=True)
class LoadFailed(Input):
    reason: str


@dataclass(frozen=True, slots=True)
class Exited(Input):
    """The process is gone (and its descendants killed). ``blame`` comes from the delivery's
    account of what was in flight; ``poison_budget_spent`` says why the plugin's share of poison
    events is too large, if it is."""

    returncode: int
    blame: Blame = Blame.PLUGIN
    poison_budget_spent: str = ""
    #: Generations whose counted failures turned out to be a poison event's fault.
    forgive: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Fault(Input):
    """The host saw the worker misbehave; ``verdict`` says how."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class DeadlineExceeded(Fault):
    """A batch not done in time, a start too slow, or a stop not finished in time."""


@dataclass(frozen=True, slots=True)
class HeartbeatLost(Fault):
    """An idle worker sent nothing, not even a heartbeat, for too long."""


@dataclass(frozen=True, slots=True)
class LimitExceeded(Fault):
    """Memory, idle CPU or processes over the manifest's limits."""


@dataclass(frozen=True, slots=True)
class ProtocolViolated(Fault):
    """It sent what the session protocol does not allow, or hung up and kept running."""


@dataclass(frozen=True, slots=True)
class StopRequested(Input):
    """The host is stopping: finish what is owed, then exit."""


@dataclass(frozen=True, slots=True)
class RestartRequested(Input):
    """The operator asked for a fresh worker on the same content."""


@dataclass(frozen=True, slots=True)
class BackoffElapsed(Input):
    """The delay before a restart, or a quarantine's period, is over."""


@dataclass(frozen=True, slots=True)
class ProbationPassed(Input):
    """A worker on probation has run long enough without failing."""


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a new worker process (generation ``generation``)."""

    generation: int


@dataclass(frozen=True, slots=True)
class Terminate:
    """SIGTERM the worker's process group, SIGKILL after the grace period."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL the worker's process group now."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Drain:
    """Send nothing new once what is owed is delivered; then ask the worker to stop."""


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    """Feed BackoffElapsed after ``delay_s``; ``cause`` is counted among the restarts."""

    delay_s: float
    cause: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Persist the quarantine and feed BackoffElapsed after ``retry_in_s`` (probation)."""

    reason: str
    level: int
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class SetAside:
    """Say the plugin cannot be started, and feed BackoffElapsed after ``retry_in_s``."""

    reason: str
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class Release:
    """Lift the persisted quarantine: the probation was passed."""


@dataclass(frozen=True, slots=True)
class Settle:
    """The plugin is owed nothing more in this run: count what it will never process."""


Action = (
    Spawn | Terminate | Kill | Drain | ScheduleRestart | Quarantine | SetAside | Release | Settle
)


# -- the table ------------------------------------------------------------------------------

_WORKING: Final = (Phase.STARTING, Phase.RUNNING, Phase.DRAINING)

#: Every transition a worker can make: (phase, input) -> the phases it may go to. The choice
#: among several is made by the restart policy, the poison budget, or what the input says.
#: A pair that is not here is ignored and logged as a host bug.
TRANSITIONS: Final[Mapping[tuple[Phase, type[Input]], frozenset[Phase]]] = {
    (Phase.SPAWNING, Spawned): frozenset({Phase.STARTING}),
    (Phase.SPAWNING, SpawnFailed): frozenset({Phase.BACKING_OFF, Phase.SET_ASIDE}),
    (Phase.STARTING, Ready): frozenset({Phase.RUNNING}),
    (Phase.DRAINING, Ready): frozenset({Phase.DRAINING}),
    (Phase.STARTING, LoadFailed): frozenset({Phase.FAILED}),
    (Phase.DRAINING, LoadFailed): frozenset({Phase.FAILED}),
    **{
        (phase, kind): frozenset({phase})
        for phase in _WORKING
        for kind in (DeadlineExceeded, HeartbeatLost, LimitExceeded, ProtocolViolated)
    },
    (Phase.STARTING, Exited): frozenset({Phase.BACKING_OFF, Phase.QUARANTINED}),
    (Phase.RUNNING, Exited): frozenset({Phase.BACKING_OFF, Phase.QUARANTINED}),
    (Phase.DRAINING, Exited): frozenset({Phase.STOPPED}),
    (Phase.FAILED, Exited): frozenset({Phase.FAILED}),
    (Phase.STARTING, StopRequested): frozenset({Phase.DRAINING}),
    (Phase.RUNNING, StopRequested): frozenset({Phase.DRAINING}),
    (Phase.DRAINING, StopRequested): frozenset({Phase.DRAINING}),
    (Phase.BACKING_OFF, StopRequested): frozenset({Phase.STOPPED}),
    (Phase.QUARANTINED, StopRequested): frozenset({Phase.QUARANTINED}),
    (Phase.SET_ASIDE, StopRequested): frozenset({Phase.SET_ASIDE}),
    (Phase.FAILED, StopRequested): frozenset({Phase.FAILED}),
    (Phase.STOPPED, StopRequested): frozenset({Phase.STOPPED}),
    (Phase.STARTING, RestartRequested): frozenset({Phase.STARTING}),
    (Phase.RUNNING, RestartRequested): frozenset({Phase.RUNNING}),
    (Phase.BACKING_OFF, RestartRequested): frozenset({Phase.SPAWNING}),
    (Phase.SET_ASIDE, RestartRequested): frozenset({Phase.SPAWNING}),
    (Phase.BACKING_OFF, BackoffElapsed): frozenset({Phase.SPAWNING}),
    (Phase.QUARANTINED, BackoffElapsed): frozenset({Phase.SPAWNING}),
    (Phase.SET_ASIDE, BackoffElapsed): frozenset({Phase.SPAWNING}),
    (Phase.RUNNING, ProbationPassed): frozenset({Phase.RUNNING}),
}

#: Inputs about the current generation that may still arrive after the worker settled (a
#: process that ends after its plugin gave up): accepted and ignored.
_LATE: Final = {
    Exited,
    DeadlineExceeded,
    HeartbeatLost,
    LimitExceeded,
    ProtocolViolated,
    BackoffElapsed,
    ProbationPassed,
}


class IllegalTransition(Exception):  # noqa: N818  (a host bug, named for what it is)
    """An input arrived in a phase where the table does not allow it."""


@dataclass(slots=True)
class Lifecycle:
    """The phase of one plugin's worker and every decision about it.

    Args:
        policy: Backoff, crash-loop breaker and quarantine periods.
        quarantine_level: How many quarantines this plugin version has served already (0 for
            none). A plugin that starts on probation has served one.
        on_probation: Whether the plugin starts on probation, after a served quarantine.
    """

    policy: RestartPolicy
    quarantine_level: int = 0
    on_probation: bool = False
    phase: Phase = Phase.SPAWNING
    generation: int = 0
    #: Why the plugin is in its phase (the last failure, the quarantine, the load error).
    reason: str = ""
    #: The verdict of whoever decided the current worker must die (first one wins).
    death: Verdict | None = None
    running_since: float | None = None
    _restarts: RestartTracker = field(init=False)
    #: Starts that failed in a row (no process could be had), and times set aside for it.
    _failed_starts: int = 0
    _set_asides: int = 0
    #: When each generation's failure was counted, so that it can be forgiven.
    _counted: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._restarts = RestartTracker(self.policy)

    def begin(self) -> list[Action]:
        """The first action: spawn the first worker."""
        self.generation = 1
        return [Spawn(self.generation)]

    def begin_quarantined(self, reason: str, retry_in_s: float) -> list[Action]:
        """Start out quarantined (from an earlier run) until ``retry_in_s`` from now."""
        self.phase = Phase.QUARANTINED
        self.reason = reason
        return [Settle(), Quarantine(reason, self.quarantine_level, retry_in_s)]

    def verdict_for(self, returncode: int) -> Verdict:
        """Why the current worker ended: what the host decided, else its exit status."""
        return self.death or exit_verdict(returncode)

    def handle(self, happened: Input, now: float) -> list[Action]:
        """Take one input; return the actions to carry out, in order.

        Raises:
            IllegalTransition: if the table has no row for the phase and the input.
        """
        if happened.generation != self.generation:
            return []  # about a worker that is already gone
        key = (self.phase, type(happened))
        allowed = TRANSITIONS.get(key)
        if allowed is None:
            if self.phase.final and type(happened) in _LATE:
                return []
            raise IllegalTransition(f"{type(happened).__name__} while {self.phase.value}")
        before = self.phase
        actions = self._decide(happened, now)
        if self.phase not in allowed:  # the table and the code must agree; a test checks
            raise IllegalTransition(
                f"{type(happened).__name__} took {before.value} to {self.phase.value}"
            )
        return actions

    def _decide(self, happened: Input, now: float) -> list[Action]:  # noqa: PLR0912
        # One case per kind of row of the table: split up, the table would be harder to see.
        match happened:
            case Spawned():
                self.phase = Phase.STARTING
                return []
            case SpawnFailed(reason=reason):
                # The host could not fork: not the plugin's doing, so it never quarantines it;
                # but a plugin that cannot start must not hold its group's backlog for ever.
                self._failed_starts += 1
                if self._failed_starts >= self.policy.start_attempts:
                    return self._set_aside(reason)
                verdict = Verdict("exit", f"could not start: {reason}")
                return self._failed(verdict, now, Blame.OUTSIDE)
            case Ready():
                self._failed_starts = self._set_asides = 0
                if self.phase is Phase.STARTING:
                    self.phase = Phase.RUNNING
                self.running_since = now
                self.reason = ""  # running again: the last failure is history (and counted)
                return []
            case LoadFailed(reason=reason):
                self.phase = Phase.FAILED
                self.reason = f"failed to load: {reason}"
                return [Settle()]
            case ProtocolViolated(verdict=verdict):
                return self._doom(verdict, Kill(verdict))
            case DeadlineExceeded(verdict=verdict) if self.phase is Phase.DRAINING:
                return self._doom(verdict, Kill(verdict))
            case DeadlineExceeded(verdict=v) | HeartbeatLost(verdict=v) | LimitExceeded(verdict=v):
                return self._doom(v, Terminate(v))
            case Exited() if self.phase is Phase.FAILED:
                return []
            case Exited() if self.phase is Phase.DRAINING:
                self.phase = Phase.STOPPED
                self.reason = ""
                return [Settle()]
            case Exited(returncode=code, blame=blame, poison_budget_spent=spent, forgive=forgive):
                for generation in forgive:
                    counted_at = self._counted.pop(generation, None)
                    if counted_at is not None:
                        self._restarts.forgive(counted_at)
                verdict = self.verdict_for(code)
                if blame is Blame.OUTSIDE and self.death is None:
                    verdict = Verdict("killed", f"{verdict.detail} from outside the host")
                if spent:
                    return self._quarantine(f"poison budget spent: {spent}", now)
                return self._failed(verdict, now, blame)
            case StopRequested() if self.phase in (Phase.STARTING, Phase.RUNNING):
                self.phase = Phase.DRAINING
                return [Drain()]
            case StopRequested() if self.phase is Phase.BACKING_OFF:
                self.phase = Phase.STOPPED
                self.reason = f"stopped while backing off after {self.reason}"
                return [Settle()]
            case StopRequested():
                return []
            case RestartRequested() if self.phase not in (Phase.BACKING_OFF, Phase.SET_ASIDE):
                verdict = Verdict(OPERATOR, "restarted by the operator")
                return self._doom(verdict, Terminate(verdict))
            case BackoffElapsed() | RestartRequested():
                if self.phase is Phase.QUARANTINED:
                    self.on_probation = True
                self.phase = Phase.SPAWNING
                self.generation += 1
                self.death = None
                self.running_since = None
                return [Spawn(self.generation)]
            case ProbationPassed():
                self.on_probation = False
                self.quarantine_level = 0
                return [Release()]
        raise IllegalTransition(f"no decision for {type(happened).__name__}")  # pragma: no cover

    def _doom(self, verdict: Verdict, action: Terminate | Kill) -> list[Action]:
        """Stop the current worker for ``verdict``, once: later verdicts do not change the cause."""
        if self.death is not None and not isinstance(action, Kill):
            return []
        self.death = self.death or verdict
        return [action]

    def _failed(self, verdict: Verdict, now: float, blame: Blame = Blame.PLUGIN) -> list[Action]:
        """The worker is gone for ``verdict``: restart it (when, depends on whose fault it was)
        or quarantine the plugin."""
        running_since, self.running_since = self.running_since, None
        if blame in (Blame.EVENT, Blame.HOST):
            delay: float | None = 0.0
        elif blame is Blame.OUTSIDE:
            delay = self._restarts.record_uncounted(now, running_since)
        elif self.on_probation:
            return self._quarantine(f"failed on probation: {verdict.detail}", now)
        else:
            delay = self._restarts.record_failure(now, running_since)
            self._counted[self.generation] = now
            for old in [g for g, t in self._counted.items() if now - t > self.policy.window_s]:
                del self._counted[old]  # out of the breaker's window: nothing left to forgive
        if delay is None:
            policy = self.policy
            return self._quarantine(
                f"{policy.burst} failures within {policy.window_s:g}s, last: {verdict.detail}", now
            )
        self.phase = Phase.BACKING_OFF
        self.reason = verdict.detail
        return [ScheduleRestart(delay, verdict.cause)]

    def _set_aside(self, last_error: str) -> list[Action]:
        policy = self.policy
        retry_in = min(policy.max_set_aside_s, policy.set_aside_s * 2.0**self._set_asides)
        self._set_asides += 1
        self.phase = Phase.SET_ASIDE
        self.reason = (
            f"its worker could not be started {self._failed_starts} times in a row, "
            f"last: {last_error}"
        )
        return [Settle(), SetAside(self.reason, retry_in)]

    def _quarantine(self, reason: str, now: float) -> list[Action]:
        del now
        periods = self.policy.quarantine_periods_s
        retry_in = periods[min(self.quarantine_level, len(periods) - 1)]
        self.quarantine_level += 1
        self.on_probation = False
        self.phase = Phase.QUARANTINED
        self.reason = reason
        return [Settle(), Quarantine(reason, self.quarantine_level, retry_in)]


def transition_table() -> str:
    """The transition table as Markdown, for the docs (a test keeps docs/lifecycle.md in step)."""
    lines = ["| phase | input | next phase |", "| --- | --- | --- |"]
    for (phase, kind), targets in TRANSITIONS.items():
        names = ", ".join(sorted(t.value for t in targets))
        lines.append(f"| {phase.value} | {kind.__name__} | {names} |")
    return "\n".join(lines) + "\n"
