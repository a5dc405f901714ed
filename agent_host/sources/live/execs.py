"""Who each recent process is, as its exec reported it: shared by the sensors.

The syscall sensor sees every exec with its executable and uid at the moment it happens; the
file sensor learns only a pid, often of a process that has exited by the time its change is
read (``mkdir``, ``chmod``, ``cp`` live a millisecond). This table lets it name them. It is
bounded: the oldest entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final, NamedTuple

_CAPACITY: Final = 16_384


class Exec(NamedTuple):
    uid: int
    exe: str
    cmdline: tuple[str, ...] = ()


class ExecTable:
    """pid -> the last exec seen for it, for the last ``capacity`` execs."""

    def __init__(self, capacity: int = _CAPACITY) -> None:
        self._capacity = capacity
        self._execs: OrderedDict[int, Exec] = OrderedDict()
        self._changed = threading.Condition()
        #: Set while a sensor fills the table: only then is waiting for an exec worth it.
        self.filled = threading.Event()

    def record(self, pid: int, uid: int, exe: str, cmdline: tuple[str, ...] = ()) -> None:
        with self._changed:
            self._execs[pid] = Exec(uid, exe, cmdline)
            self._execs.move_to_end(pid)
            if len(self._execs) > self._capacity:
                self._execs.popitem(last=False)
            self._changed.notify_all()

    def lookup(self, pid: int, wait_s: float = 0.0) -> Exec | None:
        """The exec of ``pid``; waits up to ``wait_s`` for one still being read."""
        with self._changed:
            if wait_s > 0 and self.filled.is_set():
                self._changed.wait_for(lambda: pid in self._execs, wait_s)
            return self._execs.get(pid)
