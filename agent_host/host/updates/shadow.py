"""A shadow trial: a validated new version beside the current one, its findings kept apart.

A shadow version (the *candidate*) runs beside the current one, on the same events (it is one
more subscriber of the same group, from the batch after it joined), with its findings kept
apart: nothing it reports is emitted. When it has processed the configured number of events,
or run for the configured time, without a fault, it is promoted at a cut between two batches:
the current version is owed every batch up to the cut and the candidate's findings are
emitted for every batch after it, so each event's findings come from exactly one version.

Both versions' findings over the shared events are compared by (rule, first event cited):
the *shadow report* says what the new version adds and what it misses. The comparison is
bounded (``MAX_KEYS`` per side); past that it is counted, not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from agent_host.host.fanout import Group
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.stats import PluginStats
from agent_host.host.updates.content import Content
from agent_host.protocol import Finding


class Version(Protocol):
    """What a trial reads of each version's runner (a ``PluginRunner``)."""

    @property
    def name(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def content(self) -> Content: ...
    @property
    def group(self) -> Group: ...
    @property
    def stats(self) -> PluginStats: ...
    @property
    def phase(self) -> Phase: ...


#: Findings remembered per side of a trial, for its report.
MAX_KEYS: Final = 100_000
#: Examples of added and missing findings a report keeps.
EXAMPLES: Final = 10

#: What identifies a finding across two versions: its rule and the first event it cites.
Key = tuple[str, int]


def _key(finding: Finding) -> Key:
    return (finding.rule, finding.event_ids[0] if finding.event_ids else 0)


@dataclass(slots=True)
class _Seen:
    """One side's findings over the trial, bounded."""

    keys: set[Key] = field(default_factory=set)
    beyond: int = 0  # findings past MAX_KEYS, counted only

    def note(self, findings: Sequence[Finding]) -> None:
        for finding in findings:
            if len(self.keys) < MAX_KEYS:
                self.keys.add(_key(finding))
            else:
                self.beyond += 1

    def within(self, after: int, through: int) -> set[Key]:
        return {k for k in self.keys if after < k[1] <= through}


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """What the candidate found against the current version over the shadow period."""

    events: int
    current: int
    candidate: int
    added: tuple[str, ...]
    missing: tuple[str, ...]
    added_total: int
    missing_total: int
    #: Findings past the comparison's bound (so the counts above are of the first ones).
    uncompared: int

    def __str__(self) -> str:
        text = (
            f"over {self.events} events: current {self.current} findings, new {self.candidate};"
            f" {self.added_total} added, {self.missing_total} missing"
        )
        if self.added:
            text += f" (added: {', '.join(self.added)})"
        if self.missing:
            text += f" (missing: {', '.join(self.missing)})"
        if self.uncompared:
            text += f"; {self.uncompared} findings past the bound not compared"
        return text


V = TypeVar("V", bound=Version)


class ShadowTrial(Generic[V]):
    """One candidate version in shadow beside the current one, until promotion or rollback."""

    def __init__(self, current: V, candidate: V, after_seq: int, now: float) -> None:
        self.current = current
        self.candidate = candidate
        #: The candidate is owed every event after this one.
        self.after_seq = after_seq
        self.started = now
        #: Set at promotion: the last event the current version is owed, and its batch.
        self.cut_seq: int | None = None
        self.cut_batch = 0
        self._current = _Seen()
        self._candidate = _Seen()
        #: Events the candidate processed in shadow (before the cut).
        self.shadowed = 0

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def promoted(self) -> bool:
        return self.cut_seq is not None

    def tries(self, manifest: Manifest, measurement: str) -> bool:
        """Whether this trial's candidate is that very version."""
        candidate = self.candidate
        return candidate.manifest == manifest and candidate.content.measurement == measurement

    def due(self, now: float, events: int, seconds: float) -> bool:
        """Whether the candidate has served its shadow period (the caller checks its health)."""
        return self.candidate.stats.processed >= events or now - self.started >= seconds

    def emitted(
        self, runner: V, seqs: Sequence[int] | None, findings: list[Finding]
    ) -> list[Finding]:
        """Of one batch's findings (``seqs`` None: its on_stop), the ones to emit; the
        candidate's are kept apart until the batches after the cut."""
        if runner is self.candidate:
            after_cut = self.cut_seq is not None and (seqs is None or seqs[0] > self.cut_seq)
            if after_cut:
                return findings
            self.shadowed += len(seqs or ())
            self._candidate.note(findings)
            return []
        if seqs is not None and seqs[-1] > self.after_seq:
            self._current.note(findings)
        return findings

    def cut(self, last_seq: int, last_batch: int) -> None:
        self.cut_seq, self.cut_batch = last_seq, last_batch

    def settled(self) -> bool:
        """Whether both versions are done with the shared events (the report is complete)."""
        if not self.current.phase.final:
            return False
        candidate = self.candidate
        backlog = candidate.group.backlog
        return candidate.phase.final or backlog.first_pending(candidate.key) > self.cut_batch

    def report(self) -> ShadowReport:
        through = self.cut_seq if self.cut_seq is not None else 2**64
        current = self._current.within(self.after_seq, through)
        candidate = self._candidate.within(self.after_seq, through)
        added, missing = sorted(candidate - current), sorted(current - candidate)
        return ShadowReport(
            events=self.shadowed,
            current=len(current),
            candidate=len(candidate),
            added=tuple(f"{rule}@{seq}" for rule, seq in added[:EXAMPLES]),
            missing=tuple(f"{rule}@{seq}" for rule, seq in missing[:EXAMPLES]),
            added_total=len(added),
            missing_total=len(missing),
            uncompared=self._current.beyond + self._candidate.beyond,
        )
