"""Poison-event isolation: bisect a batch that failed a plugin twice, to find what kills it.

This is the Channel File 291 lesson: one bad input must not blind the agent. The failing batch
is split in halves and each half is sent alone; a half that passes is done, a half that fails is
split again, and a single event that fails is set aside as a dead letter. Everything else in the
batch is processed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agent_host.fanout import Batch


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of the batch under isolation."""

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


class Isolation:
    """The bisection of one batch for one plugin."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
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
