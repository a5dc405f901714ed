"""Delivery to one plugin: what it has been sent of its group's backlog and not yet processed.

Each plugin reads its group's backlog through its own cursor, with at most ``window`` batches in
flight. When its worker dies, what was in flight is handed to the poison isolator and the cursor
goes back to the oldest batch the plugin has not processed: its replacement gets those again
(at-least-once per plugin; the finding pipeline deduplicates). While a batch is bisected, its
pieces go out alone, one at a time, and nothing else does.

No I/O here and no clock of its own: the runner passes ``now`` and writes the frames this returns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from agent_host.errors import ProtocolError
from agent_host.host.fanout import Batch, Group
from agent_host.host.lifecycle import Blame
from agent_host.host.poison import Attribution, PoisonIsolator
from agent_host.host.stats import PluginStats
from agent_host.protocol import batch_frame, batch_payload

#: Ids of the pieces sent while bisecting; backlog batch ids never come near.
PIECE_ID_BASE: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Answered:
    """A batch the worker answered, and what the plugin is done with because of it."""

    batch: Batch
    #: The backlog batch the plugin is finished with (the batch itself, or the batch whose
    #: bisection this piece completed), or None.
    finished: Batch | None


class Delivery:
    """The cursor, window and in-flight batches of one plugin over its group's backlog."""

    def __init__(self, plugin: str, group: Group, window: int, stats: PluginStats) -> None:
        self.plugin = plugin
        self.group = group
        self._window = window
        self._stats = stats
        self.poison = PoisonIsolator()
        self.cursor = group.backlog.next_id
        #: In send order: the first is the one being processed.
        self.inflight: OrderedDict[int, Batch] = OrderedDict()
        #: When the worker started on the first in-flight batch.
        self.head_since = 0.0
        self._highest_sent = 0
        self._highest_seq = 0  # on_stop findings may cite any event up to this one
        self._piece_ids = PIECE_ID_BASE
        #: backlog.appended when the plugin stopped being owed events; None while it is owed.
        self._gave_up_at: int | None = None

    @property
    def idle(self) -> bool:
        return not self.inflight

    @property
    def drained(self) -> bool:
        """Nothing in flight, nothing under bisection, and nothing left in the backlog to send."""
        return (
            not self.inflight
            and self.poison.bisection is None
            and self.cursor >= self.group.backlog.next_id
        )

    def head(self) -> Batch | None:
        return next(iter(self.inflight.values()), None)

    def next_batch(self, now: float) -> Batch | None:
        """Take the next batch to send (and count it as sent), or None if none may go now."""
        batch = self._pick()
        if batch is None:
            return None
        if not self.inflight:
            self.head_since = now
        self.inflight[batch.batch_id] = batch
        self._stats.delivered += len(batch)
        if batch.batch_id >= PIECE_ID_BASE or batch.batch_id <= self._highest_sent:
            self._stats.redelivered += len(batch)
        else:
            self._highest_sent = batch.batch_id
        self._highest_seq = max(self._highest_seq, batch.seqs[-1])
        return batch

    def _pick(self) -> Batch | None:
        bisection = self.poison.bisection
        if bisection is not None:
            piece = bisection.current()
            if self.inflight or piece is None:
                return None  # pieces go one at a time: a failure must point at one of them
            self._piece_ids += 1
            frame = batch_frame(batch_payload(self._piece_ids, piece.records))
            return Batch(self._piece_ids, frame, piece.records, piece.seqs, set())
        backlog = self.group.backlog
        while len(self.inflight) < self._window and self.cursor < backlog.next_id:
            batch = backlog.get(self.cursor)
            self.cursor += 1
            if batch is not None and self.plugin in batch.pending:
                return batch
        return None

    def answered(self, batch_id: int, processed: int, now: float) -> Answered:
        """The worker answered ``batch_id`` having processed ``processed`` events.

        Raises:
            ProtocolError: for an answer to a batch it was not given, or not given next, or
                that does not account for every event.
        """
        batch = self.head()
        if batch is None or batch.batch_id != batch_id:
            raise ProtocolError(
                self.plugin,
                f"answered batch {batch_id}, which it was not given or not given next",
            )
        if processed != len(batch):
            raise ProtocolError(
                self.plugin,
                f"processed {processed} of the {len(batch)} events in batch {batch_id}",
            )
        del self.inflight[batch_id]
        self.head_since = now
        if batch_id >= PIECE_ID_BASE:
            return Answered(batch, self.poison.piece_passed())
        self.poison.processed(batch_id)
        return Answered(batch, batch)

    def lost(self, blame: Blame, generation: int) -> tuple[int, Attribution]:
        """The worker of ``generation`` died: rewind, and put the death down to what it held.

        Returns the number of events that were in flight, and the attribution.
        """
        lost = list(self.inflight.values())
        self.rewind()
        return sum(len(b) for b in lost), self.poison.attribute(lost, blame, generation)

    def rewind(self) -> None:
        """Forget what is in flight; the next batch is the oldest the plugin has not processed."""
        self.inflight.clear()
        self.cursor = self.group.backlog.first_pending(self.plugin)

    def was_given(self, seq: int) -> bool:
        """Whether this plugin was sent the event ``seq`` (within the group's memory)."""
        return seq <= self._highest_seq and self.group.carried(seq)

    def resume(self) -> None:
        """Start over from the backlog's end (after a quarantine served in this run)."""
        self.inflight.clear()
        self.cursor = self.group.backlog.next_id

    # -- what the plugin is owed ------------------------------------------------------------

    async def give_up(self) -> int:
        """The plugin is owed nothing more for now; how many owed events it will never process
        (they are counted undelivered)."""
        backlog = self.group.backlog
        missed = await backlog.unsubscribe(self.plugin) - self.poison.abandon()
        self._gave_up_at = backlog.appended
        self._stats.undelivered += missed
        return missed

    def count_unowed(self) -> None:
        """Count as undelivered what the group was handed since the plugin gave up."""
        if self._gave_up_at is not None:
            self._stats.undelivered += self.group.backlog.appended - self._gave_up_at
            self._gave_up_at = self.group.backlog.appended

    def take_up(self) -> None:
        """Be owed events again, from the backlog's end (after a quarantine served in this
        run)."""
        if self._gave_up_at is None:
            return
        self.count_unowed()
        self._gave_up_at = None
        self.group.backlog.subscribers.add(self.plugin)
        self.resume()

    def cut_off(self) -> None:
        """Send nothing beyond what is in flight (the host stops without waiting for the rest,
        which the plugin's settling counts undelivered)."""
        self.cursor = max(self.cursor, self.group.backlog.next_id)

    def owed_now(self) -> int:
        """What the plugin is owed and has not processed: kept batches and events waiting to
        be batched (once it gave up, nothing)."""
        backlog = self.group.backlog
        if self.plugin not in backlog.subscribers:
            return 0
        return backlog.owed(self.plugin) + self.group.waiting

    def hand_over(self, successor: Delivery) -> None:
        """Give every batch still owed to ``successor`` (another version of the plugin, in the
        same group), which processes them instead."""
        moved = self.group.backlog.hand_over(self.plugin, successor.plugin)
        self._stats.handed_over += moved - self.poison.abandon()
        successor.rewind()
