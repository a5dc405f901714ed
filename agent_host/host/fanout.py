"""Event fan-out: batching per subscription group, and the bounded backlog its workers read from.

Plugins that subscribe to the same set of event kinds form a *group*. Each event is serialized once
when the host accepts it; each group packs the events it wants into batches (by count or by age),
and each batch is framed once and kept in the group's backlog until every plugin of the group has
processed it. Every plugin reads the backlog through its own cursor, so a slow plugin falls behind
on its own without holding up the others, until it is a whole backlog behind: then the source
waits, because nothing may be dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agent_host.protocol import EventKind, batch_frame, batch_payload

#: How many of its events a group remembers (8 bytes each) to check what findings cite.
HISTORY: Final = 1 << 20


@dataclass(slots=True, eq=False)
class Batch:
    """One batch of one group, framed for the wire."""

    batch_id: int
    frame: bytes
    records: list[bytes]  # each event's EventBatch.events element, kept to re-pack sub-batches
    seqs: list[int]
    #: Plugins of the group that have not processed it yet.
    pending: set[str]
    created: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.seqs)


class Backlog:
    """The batches of one group, oldest first, bounded by ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._batches: deque[Batch] = deque()
        self._next_id = 1
        self._space = asyncio.Condition()
        self._listeners: list[Callable[[], None]] = []
        self.subscribers: set[str] = set()
        #: Events handed to this backlog, kept or not: what the group's plugins were owed.
        self.appended = 0
        #: The sequence number of the last event handed to it.
        self.last_seq = 0

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def next_id(self) -> int:
        """The id the next appended batch will have."""
        return self._next_id

    def on_append(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a batch is appended (workers use it to wake up)."""
        self._listeners.append(listener)

    async def wait_for_room(self) -> None:
        """Return once a batch can be kept (at once when no plugin subscribes any more)."""
        if not self.subscribers or len(self._batches) < self._capacity:
            return
        async with self._space:
            await self._space.wait_for(
                lambda: not self.subscribers or len(self._batches) < self._capacity
            )

    def keep(self, records: list[bytes], seqs: list[int]) -> Batch | None:
        """Frame the events as a batch and keep it, room or not (``wait_for_room`` first).

        Returns None without keeping anything when no plugin subscribes any more.
        """
        self.appended += len(seqs)
        self.last_seq = seqs[-1]
        if not self.subscribers:
            return None
        batch_id = self._next_id
        self._next_id += 1
        frame = batch_frame(batch_payload(batch_id, records))
        batch = Batch(batch_id, frame, records, seqs, set(self.subscribers))
        self._batches.append(batch)
        for listener in self._listeners:
            listener()
        return batch

    def get(self, batch_id: int) -> Batch | None:
        """The batch with ``batch_id`` if it is still kept."""
        if not self._batches:
            return None
        index = batch_id - self._batches[0].batch_id
        if 0 <= index < len(self._batches):
            return self._batches[index]
        return None

    def first_pending(self, plugin: str) -> int:
        """The id of the oldest batch ``plugin`` has not processed (next_id if none)."""
        for batch in self._batches:
            if plugin in batch.pending:
                return batch.batch_id
        return self._next_id

    async def done(self, plugin: str, batch: Batch) -> None:
        """``plugin`` is finished with ``batch``: free what nobody needs any more."""
        batch.pending.discard(plugin)
        await self._trim()

    def hand_over(self, plugin: str, successor: str) -> int:
        """Make ``successor`` owed what ``plugin`` is owed, instead of it; return the events."""
        self.subscribers.discard(plugin)
        self.subscribers.add(successor)
        moved = 0
        for batch in self._batches:
            if plugin in batch.pending:
                batch.pending.discard(plugin)
                batch.pending.add(successor)
                moved += len(batch)
        return moved

    async def unsubscribe(self, plugin: str) -> int:
        """Stop keeping batches for ``plugin``; return how many kept events it never processed."""
        self.subscribers.discard(plugin)
        missed = 0
        for batch in self._batches:
            if plugin in batch.pending:
                batch.pending.discard(plugin)
                missed += len(batch)
        await self._trim()
        if not self.subscribers:  # a source waiting for room must not wait for nobody
            async with self._space:
                self._space.notify_all()
        return missed

    def oldest_seq(self) -> int | None:
        """The first event of the oldest batch kept (some plugin still owes it), if any."""
        return self._batches[0].seqs[0] if self._batches else None

    def owed(self, plugin: str) -> int:
        """The kept events ``plugin`` has not processed."""
        return sum(len(batch) for batch in self._batches if plugin in batch.pending)

    async def _trim(self) -> None:
        freed = False
        while self._batches and not self._batches[0].pending:
            self._batches.popleft()
            freed = True
        if freed:
            async with self._space:
                self._space.notify_all()

    async def wait_empty(self) -> None:
        async with self._space:
            await self._space.wait_for(lambda: not self._batches)


class Group:
    """The plugins that subscribe to one set of event kinds, and their batcher and backlog."""

    def __init__(
        self,
        kinds: frozenset[EventKind],
        batch_size: int,
        backlog_batches: int,
        on_waiting: Callable[[], None] | None = None,
    ) -> None:
        """``on_waiting``: called when an event starts waiting in an empty batcher (the flush
        timer's cue: it sleeps while nothing waits)."""
        self.kinds = kinds
        self._on_waiting = on_waiting
        self.backlog = Backlog(backlog_batches)
        self._batch_size = batch_size
        self._records: list[bytes] = []
        self._seqs: list[int] = []
        self._oldest = 0.0
        #: The sequence numbers this group carried (increasing), the last HISTORY of them: what
        #: its plugins may cite in findings.
        self._history = array("Q")
        # The source and the flush timer both flush; one at a time keeps batches in event order.
        self._flushing = asyncio.Lock()

    @property
    def name(self) -> str:
        return "+".join(sorted(self.kinds))

    def carried(self, seq: int) -> bool:
        """Whether this group carried the event ``seq`` (among its last HISTORY events)."""
        history = self._history
        i = bisect.bisect_left(history, seq)
        return i < len(history) and history[i] == seq

    def put(self, record: bytes, seq: int) -> bool:
        """Add one serialized event without waiting; True when the batch is full (flush it)."""
        self._history.append(seq)
        if len(self._history) >= 2 * HISTORY:
            del self._history[:HISTORY]
        if not self._records:
            self._oldest = time.monotonic()
            if self._on_waiting is not None:
                self._on_waiting()
        self._records.append(record)
        self._seqs.append(seq)
        return len(self._records) >= self._batch_size

    async def add(self, record: bytes, seq: int) -> None:
        """Add one serialized event; sends a batch when it is full."""
        if self.put(record, seq):
            await self.flush()

    def age(self, now: float) -> float:
        """How long the oldest unsent event has waited (0 if none)."""
        return now - self._oldest if self._records else 0.0

    def first_pending_seq(self) -> int | None:
        """The number of the oldest event some plugin of the group still has to process."""
        kept = self.backlog.oldest_seq()
        if kept is not None:
            return kept
        return self._seqs[0] if self._seqs else None

    @property
    def waiting(self) -> int:
        """Events put and not yet kept as a batch."""
        return len(self._records)

    async def flush(self) -> None:
        """Send what is waiting as a batch, however few; wait while the backlog is full.

        Cancel-safe: the events stay waiting here until the moment they are kept, with nothing
        awaited in between, so a flush cancelled (a stop that cannot wait) loses no event
        without a count.
        """
        async with self._flushing:
            if not self._records:
                return
            await self.backlog.wait_for_room()
            if not self._records:  # dropped while it waited
                return
            records, seqs = self._records, self._seqs
            self._records, self._seqs = [], []
            self.backlog.keep(records, seqs)
        # Give the workers' senders a turn now: a fast source would otherwise fill the whole
        # backlog before any batch went out.
        await asyncio.sleep(0)

    def drop_waiting(self) -> int:
        """Forget the events put and not yet kept (the host stops without them); how many."""
        dropped = len(self._records)
        self._records, self._seqs = [], []
        self.backlog.appended += dropped  # owed all the same: counted undelivered
        return dropped
