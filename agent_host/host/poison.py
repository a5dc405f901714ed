"""Poison events: find the one event that kills a plugin, set it aside, and keep the score.

This is the Channel File 291 lesson: one bad input must not blind the agent. A batch that was in
flight when the plugin failed twice is split in halves and each half is sent alone; a half that
passes is done, a half that fails is split again, and a single event that fails is set aside as a
dead letter. Everything else in the batch is processed.

A crash pinned on one event is the event's fault, not the plugin's: it does not count toward the
crash-loop breaker (otherwise whoever can make two files crash YARA could switch YARA off).
Instead a **poison budget** bounds how much of its input may poison a plugin: more than
``per_hour`` dead letters within an hour, or more than ``max_share`` of the events it settled
(once it has at least ``min_letters``), and the plugin is quarantined.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from agent_host.host.fanout import Batch
from agent_host.host.lifecycle import Blame

_HOUR_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of the batch under bisection."""

    records: list[bytes]
    seqs: list[int]

    def __len__(self) -> int:
        return len(self.seqs)

    def halves(self) -> tuple[Piece, Piece]:
        mid = len(self.seqs) // 2
        return (
            Piece(self.records[:mid], self.seqs[:mid]),
            Piece(self.records[mid:], self.seqs[mid:]),
        )


class Bisection:
    """The bisection of one batch for one plugin."""

    def __init__(self, batch: Batch, charged_by: tuple[int, ...] = ()) -> None:
        self.batch = batch
        #: The worker generations whose deaths were charged to the batch before bisection.
        self.charged_by = charged_by
        whole = Piece(batch.records, batch.seqs)
        self._todo: deque[Piece] = deque(whole.halves() if len(whole) > 1 else (whole,))
        #: Events of the batch already processed or dead-lettered.
        self.settled = 0

    @property
    def done(self) -> bool:
        return not self._todo

    def current(self) -> Piece | None:
        """The piece to try next."""
        return self._todo[0] if self._todo else None

    def passed(self) -> Piece:
        """The current piece was processed."""
        piece = self._todo.popleft()
        self.settled += len(piece)
        return piece

    def failed(self) -> Piece | None:
        """The current piece made the plugin fail; return it if it is a single (poison) event."""
        piece = self._todo.popleft()
        if len(piece) == 1:
            self.settled += 1
            return piece
        self._todo.extendleft(reversed(piece.halves()))
        return None


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a worker's death is put down to."""

    blame: Blame
    #: The event set aside, if the death pinned one down.
    dead_letter: Piece | None = None
    #: A batch whose bisection this death finished: the plugin is done with it.
    finished: Batch | None = None
    #: A batch whose bisection this death started.
    suspect: Batch | None = None
    #: Generations whose deaths this one shows were the poison event's fault, not the plugin's.
    forgive: tuple[int, ...] = ()


class PoisonIsolator:
    """Charges failures to the batches in flight and bisects the one charged twice.

    A worker can die with results for finished batches still unsent, so the batch that killed it
    is not necessarily the oldest in flight: every batch in flight is charged, a batch's charges
    are cleared when it is processed, and the oldest batch charged twice is bisected.
    """

    def __init__(self) -> None:
        #: batch id -> the generations of the workers that died holding it.
        self._charges: dict[int, list[int]] = {}
        self.bisection: Bisection | None = None

    def attribute(self, lost: list[Batch], blame: Blame, generation: int) -> Attribution:
        """Charge a death to ``lost`` (what was in flight), and say whose fault it was.

        ``blame`` is what the death would be without bisection: the plugin's, or outside's.
        Under bisection, pieces go one at a time, so the piece in flight is the one that failed;
        the failures that narrow it down are progress (``Blame.EVENT``), as is the dead letter.
        """
        # A kill from outside is charged too: a plugin can SIGKILL itself, and one that did so
        # on one event, uncharged, would get that event forever and stall its whole group.
        bisection = self.bisection
        if bisection is not None:
            if not lost:  # it died between pieces: nothing to learn from it
                return Attribution(blame)
            poison = bisection.failed()
            forgive: tuple[int, ...] = ()
            if poison is not None:
                # The deaths that made the batch suspect were this event's doing: once.
                forgive, bisection.charged_by = bisection.charged_by, ()
            finished = None
            if bisection.done:
                finished = bisection.batch
                self.bisection = None
            return Attribution(Blame.EVENT, dead_letter=poison, finished=finished, forgive=forgive)
        for batch in lost:
            self._charges.setdefault(batch.batch_id, []).append(generation)
        suspect = next((b for b in lost if len(self._charges[b.batch_id]) >= 2), None)
        if suspect is None:
            return Attribution(blame)
        self.bisection = Bisection(suspect, tuple(self._charges.pop(suspect.batch_id)))
        # These deaths count for now: only a dead letter shows they were an event's fault (and
        # then they are forgiven). A batch that bisects clean leaves them counted.
        return Attribution(blame, suspect=suspect)

    def piece_passed(self) -> Batch | None:
        """The piece in flight was processed; return the batch if that finished its bisection."""
        bisection = self.bisection
        if bisection is None:
            return None
        bisection.passed()
        if not bisection.done:
            return None
        self.bisection = None
        return bisection.batch

    def processed(self, batch_id: int) -> None:
        """``batch_id`` was processed: it is cleared of any charge."""
        self._charges.pop(batch_id, None)

    def abandon(self) -> int:
        """Forget everything (the plugin gave up); return the events of the bisected batch that
        were already settled, which its accounting must not count twice."""
        settled = self.bisection.settled if self.bisection is not None else 0
        self.bisection = None
        self._charges.clear()
        return settled


@dataclass(slots=True)
class PoisonBudget:
    """How much of its input may poison a plugin before it is quarantined.

    Args:
        per_hour: Dead letters allowed within any hour.
        max_share: Dead letters allowed as a share of the events the plugin settled ...
        min_letters: ... judged only once there are at least this many.
    """

    per_hour: int = 100
    max_share: float = 0.1
    min_letters: int = 10
    letters: int = 0
    settled: int = 0
    _times: deque[float] = field(default_factory=deque, init=False, repr=False)

    def processed(self, events: int) -> None:
        self.settled += events

    def dead_letter(self, now: float) -> str:
        """Note a dead letter at ``now``; return why the budget is spent, or "" if it is not."""
        self.letters += 1
        self.settled += 1
        self._times.append(now)
        while self._times and now - self._times[0] > _HOUR_S:
            self._times.popleft()
        if len(self._times) > self.per_hour:
            return f"{len(self._times)} dead letters within an hour > {self.per_hour}"
        share = self.letters / self.settled
        if self.letters >= self.min_letters and share > self.max_share:
            return (
                f"{self.letters} of {self.settled} events dead-lettered "
                f"({share:.0%} > {self.max_share:.0%})"
            )
        return ""
