"""What a sensor read of the machine a moment ago, kept for a moment: bounded and short-lived.

At 1,500 execs a second most execs share a parent and an interpreter: reading the parent's
``/proc`` entries and resolving the interpreter's path again for each was a third of the
syscall sensor's time. An entry lives ``ttl_s`` (a pid is not reused within a second on any
machine with a normal ``pid_max``, and a symlink to an interpreter changes with a package
upgrade, not between two execs), and is forgotten at once when what it describes changes
(the parent execs). The oldest entries go first when it is full.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """``key -> value`` for ``ttl_s`` seconds, at most ``capacity`` entries."""

    def __init__(self, ttl_s: float, capacity: int = 1024) -> None:
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] > self._ttl_s:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def remembered(self, key: K, read: Callable[[], V]) -> V:
        """The value kept for ``key`` if it is fresh, else ``read()``, kept from now."""
        now = time.monotonic()
        value = self.get(key, now)
        if value is None:
            value = read()
            self.put(key, value, now)
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
