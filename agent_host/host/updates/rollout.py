"""Staged rollout on one host: what happens to a changed plugin between its validation and
its place as the running version, and after.

A validated new version of a running plugin starts in shadow (``shadow.py``) beside it. It is
promoted once it has served its shadow period without a fault, or rolled back at its first
fault; rolled-back content is not tried again until it changes. The version a promotion
replaced is kept as the *last known good*: if the promoted one is quarantined, or fails to
start, it is brought back and handed every batch the failed one still owed.

Every step is a line in the plugin's history (``agent-host plugins history NAME``).
"""

from __future__ import annotations

import time
from typing import Any, Generic, Protocol, TypeVar

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.updates.content import Admitted, Content
from agent_host.host.updates.shadow import ShadowReport, ShadowTrial, Version

log = structlog.get_logger("agent_host")


class RolloutVersion(Version, Protocol):
    """What the rollout does with a version's runner (a ``R``), beyond a trial's."""

    trial: ShadowTrial[Any] | None
    retired: str

    @property
    def signer(self) -> str: ...

    def start(self) -> None: ...

    def retire(self, reason: str) -> None: ...

    def hand_over(self, successor: Any) -> None: ...


R = TypeVar("R", bound=RolloutVersion)


class RolloutHost(Protocol[R]):
    """What the rollout needs of the supervisor."""

    plugins: dict[str, R]
    retired: list[R]
    #: The host's settings as they are now (a reload may change the shadow run's).
    config: HostConfig

    def install(self, runner: R) -> None: ...

    def record(
        self, runner: R | Manifest, what: str, detail: str = "", *, measurement: str = ""
    ) -> None: ...

    def runner_for(self, manifest: Manifest, admitted: Admitted | None = None) -> R | None: ...


class Rollout(Generic[R]):
    """The shadow trials of one host, its rejected content and its last known good versions."""

    def __init__(self, host: RolloutHost[R]) -> None:
        self._host = host
        #: Candidate versions in shadow, by plugin; and promoted ones whose report is pending.
        self.trials: dict[str, ShadowTrial[R]] = {}
        self._settling: list[ShadowTrial[R]] = []
        #: The report of each plugin's last shadow period.
        self.reports: dict[str, ShadowReport] = {}
        #: The measurement of each plugin's content that failed validation or its shadow run.
        self._rejected: dict[str, str] = {}
        #: The version each promotion replaced.
        self._last_good: dict[str, R] = {}

    @property
    def candidates(self) -> list[R]:
        return [trial.candidate for trial in self.trials.values()]

    def reject(self, name: str, content: Content) -> None:
        self._rejected[name] = content.measurement

    def still_rejected(self, manifest: Manifest, content: Content) -> bool:
        """Whether this very content failed validation or a shadow run before."""
        if self._rejected.get(manifest.name) != content.measurement:
            return False
        log.warning(
            "plugin version still rejected: not tried again until its content changes",
            plugin=manifest.name,
            measurement=content.measurement,
        )
        return True

    def in_shadow(self, manifest: Manifest, measurement: str) -> bool:
        """Whether that very version is in shadow now."""
        trial = self.trials.get(manifest.name)
        return trial is not None and trial.tries(manifest, measurement)

    def shadows(self, current: R, candidate: R) -> bool:
        """Whether ``candidate`` goes to shadow first: the host shadows updates, the current
        version is running (there is something to compare with), and both are owed the same
        events (one group)."""
        return (
            self._host.config.shadow
            and current.phase is Phase.RUNNING
            and current.group is candidate.group
        )

    def begin(self, current: R, candidate: R) -> None:
        backlog = candidate.group.backlog
        trial = ShadowTrial(current, candidate, backlog.last_seq, time.monotonic())
        current.trial = candidate.trial = trial
        self.trials[candidate.name] = trial
        self._host.record(candidate, "shadow", f"beside version {current.manifest.version}")
        log.info(
            "new plugin version in shadow: its findings are kept apart",
            plugin=candidate.name,
            version=candidate.manifest.version,
            current=current.manifest.version,
            events=self._host.config.shadow_events,
            seconds=self._host.config.shadow_s,
        )

    def withdraw(self, name: str, why: str) -> None:
        """Take the candidate of ``name`` out, if there is one, without a verdict on it."""
        trial = self.trials.get(name)
        if trial is not None:
            self._end(trial, "withdrawn", why)

    def _end(self, trial: ShadowTrial[R], what: str, why: str) -> None:
        """Take the candidate out without promoting it (its findings stay unemitted)."""
        del self.trials[trial.name]
        trial.current.trial = None
        trial.candidate.retire(f"{what}: {why}")
        self._host.retired.append(trial.candidate)
        self._host.record(trial.candidate, what, why)

    def _roll_back(self, trial: ShadowTrial[R], why: str) -> None:
        candidate = trial.candidate
        self.reject(trial.name, candidate.content)
        self._end(trial, "rolled back", f"fault in shadow: {why}")
        log.error(
            "new plugin version rolled back: it failed in shadow; the current one stays",
            plugin=trial.name,
            version=candidate.manifest.version,
            measurement=candidate.content.measurement,
            reason=why,
        )

    def advance(self, now: float) -> None:
        """Promote each candidate that has served its shadow period; finish each report whose
        versions are both past the cut. Called by the host's watchdog loop."""
        config = self._host.config
        for trial in list(self.trials.values()):
            healthy = trial.candidate.phase is Phase.RUNNING and not trial.candidate.stats.restarts
            if healthy and trial.due(now, config.shadow_events, config.shadow_s):
                self._promote(trial)
        for trial in [t for t in self._settling if t.settled()]:
            self._settling.remove(trial)
            self._finish_report(trial)

    def _promote(self, trial: ShadowTrial[R]) -> None:
        """The cut, with nothing awaited: every batch kept so far is the current version's to
        finish, every later one the candidate's, whose findings are emitted from then on."""
        host, current, candidate = self._host, trial.current, trial.candidate
        backlog = candidate.group.backlog
        trial.cut(backlog.last_seq, backlog.next_id - 1)
        del self.trials[trial.name]
        self._settling.append(trial)
        version = candidate.manifest.version
        if host.plugins.get(trial.name) is current:
            current.retire(f"replaced by version {version} after its shadow run")
            host.retired.append(current)
            self._last_good[trial.name] = current
        host.install(candidate)
        host.record(candidate, "promoted", f"after {trial.shadowed} events in shadow")
        log.info(
            "new plugin version promoted after its shadow run",
            plugin=trial.name,
            version=version,
            shadow_events=trial.shadowed,
            last_known_good=current.manifest.version,
        )

    def _finish_report(self, trial: ShadowTrial[R]) -> None:
        report = trial.report()
        trial.current.trial = trial.candidate.trial = None
        self.reports[trial.name] = report
        self._host.record(trial.candidate, "shadow report", str(report))
        log.info("shadow report", plugin=trial.name, report=str(report))

    def on_failure(self, runner: R, why: str) -> bool:
        """A runner failed: a candidate in shadow is rolled back; a promoted version that is
        quarantined (or fails to load) is replaced by its last known good. Whether it was
        taken in hand (then the runner does not restart)."""
        trial = self.trials.get(runner.name)
        if trial is not None and trial.candidate is runner:
            self._roll_back(trial, why)
            return True
        gave_up = runner.phase in (Phase.QUARANTINED, Phase.FAILED)
        good = self._last_good.get(runner.name)
        if not gave_up or good is None or self._host.plugins.get(runner.name) is not runner:
            return False
        del self._last_good[runner.name]
        self.withdraw(runner.name, "its current version was replaced")
        self._bring_back(runner, good, why)
        return True

    def _bring_back(self, failed: R, good: R, why: str) -> None:
        """Replace ``failed`` by a new runner of its last known good version, which takes over
        every batch ``failed`` still owed."""
        host = self._host
        admitted = Admitted(good.content, good.signer)
        runner = host.runner_for(good.manifest, admitted)
        if runner is None:  # cannot happen: the content was admitted before
            return
        if runner.group is failed.group:
            failed.hand_over(runner)
        failed.retired = f"replaced by its last known good version {good.manifest.version}"
        host.retired.append(failed)
        host.install(runner)
        runner.start()
        host.record(failed, "replaced", f"by its last known good: {why}")
        host.record(
            runner, "last known good", f"back in place of version {failed.manifest.version}"
        )
        log.error(
            "plugin version failed after its promotion; back to its last known good",
            plugin=failed.name,
            failed_version=failed.manifest.version,
            version=good.manifest.version,
            reason=why,
        )

    def stop(self) -> None:
        """The host stopped: every candidate still in shadow is withdrawn, every pending report
        finished."""
        for name in list(self.trials):
            self.withdraw(name, "the host stopped before its promotion")
        for trial in self._settling:
            self._finish_report(trial)
        self._settling.clear()
