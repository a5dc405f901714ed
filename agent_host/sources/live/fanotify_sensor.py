"""The file sensor as root: fanotify filesystem marks, with who made each change.

Each change under a watched folder becomes one event with the pid of the process that made it
and its uid and executable: read from /proc at once, or, for a writer that has exited already
(``mkdir``, ``chmod``, ``cp`` live a millisecond), from the exec the syscall sensor saw for it
(``execs.py``). Without the syscall sensor such a writer has only its pid. Creations, deletions,
renames, modifications and attribute changes (chmod, chown, setxattr, times) are reported;
opens and reads are never asked for. The host's own writes (its findings file and state) are
left out, so that reporting a change never causes another.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Final

import structlog

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live.base import ROUND_GAP_S, Emit, emit_all
from agent_host.sources.live.execs import ExecTable
from agent_host.sources.live.fanotify import (
    FAN_ATTRIB,
    FAN_CREATE,
    FAN_DELETE,
    FAN_MODIFY,
    FAN_RENAME,
    Change,
    Fanotify,
)
from agent_host.sources.live.file_changes import ChangeFilter, file_event, mode_of
from agent_host.sources.live.process import _link, _status
from agent_host.sources.live.recent import Recent

log = structlog.get_logger("agent_host")

#: A mask can carry several changes the kernel merged; they are reported in this order.
_ORDER: Final = (
    (FAN_CREATE, FileEvent.CREATED),
    (FAN_MODIFY, FileEvent.MODIFIED),
    (FAN_ATTRIB, FileEvent.ATTRIBUTES),
    (FAN_RENAME, FileEvent.MOVED),
    (FAN_DELETE, FileEvent.DELETED),
)
_WHO_TTL_S: Final = 0.5  # a burst of changes by one process reads /proc once
_WHO_MEMORY: Final = 4096
#: How long a change by an exited process waits for its exec to be read by the syscall sensor
#: (both are read as they happen; the exec came first).
_EXEC_WAIT_S: Final = 0.05


def fanotify_unavailable() -> str | None:
    """Why this process cannot use fanotify filesystem marks, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH)"
    try:
        group = Fanotify()
    except OSError as exc:
        return f"fanotify_init: {exc.strerror}"
    try:
        group.mark_filesystem("/")
    except OSError as exc:
        return str(exc.strerror)
    finally:
        group.close()
    return None


class _Who:
    """uid and executable of a pid, from /proc or the execs seen, remembered briefly."""

    def __init__(self, execs: ExecTable | None) -> None:
        self._known: Recent[int, tuple[int, str]] = Recent(_WHO_TTL_S, _WHO_MEMORY)
        self._execs = execs

    def __call__(self, pid: int) -> tuple[int, str]:
        return self._known.remembered(pid, lambda: self._read(pid))

    def _read(self, pid: int) -> tuple[int, str]:
        # The real uid, as process events and the execs table have it.
        exe, (_, real_uid, _) = _link(f"/proc/{pid}/exe"), _status(pid)
        uid = real_uid or 0
        if not exe or real_uid is None:  # gone already: its exec, if the syscall sensor saw it
            seen = self._execs.lookup(pid, _EXEC_WAIT_S) if self._execs is not None else None
            if seen is not None:
                uid, exe = seen.uid, seen.exe
        return uid, exe


class FanotifySensor:
    """Watches the filesystems of ``paths`` with fanotify and keeps what is under ``paths``."""

    name = "file"

    def __init__(
        self,
        paths: Sequence[str],
        exclude: Sequence[str] = (),
        coalesce_s: float = 1.0,
        execs: ExecTable | None = None,
    ) -> None:
        self.paths = list(paths)
        self.filter = ChangeFilter(paths, exclude, coalesce_s)
        self.counters = self.filter.counters
        self.ready = threading.Event()
        self._own = os.getpid()
        self._who = _Who(execs)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        group = Fanotify()
        try:
            watching = self._mark(group)
            if not watching:
                log.warning("file sensor: nothing to watch", paths=self.paths)
                stop.wait()
                return
            self.ready.set()
            reported = 0
            while not stop.is_set():
                if group.wait(0.5):
                    # What one read round gave is handed over together (one lock, one wakeup
                    # of the host), then a short gap lets a burst gather.
                    events: list[Event] = []
                    for change in group.changes():
                        self._report(change, events.append)
                    emit_all(emit, events)
                    stop.wait(ROUND_GAP_S)
                if group.overflows > reported:
                    self.counters["overflows"] = reported = group.overflows
                    log.warning(
                        "file sensor: fanotify queue overflowed, changes were lost",
                        overflows=reported,
                    )
                self.counters["unresolved"] = group.unresolved
        finally:
            group.close()

    def _mark(self, group: Fanotify) -> int:
        watching = 0
        for path in self.paths:
            if not os.path.isdir(path):
                self.counters["missing_paths"] += 1
                log.warning("file sensor: path to watch is missing or not a folder", path=path)
                continue
            try:
                group.mark_filesystem(path)
            except OSError as exc:  # a filesystem without file handles (some FUSE, /proc)
                self.counters["watch_errors"] += 1
                log.warning("file sensor: cannot watch with fanotify", path=path, error=str(exc))
                continue
            watching += 1
        return watching

    def _report(self, change: Change, emit: Emit) -> None:
        if change.pid == self._own:
            self.counters["own"] += 1
            return
        if not (self.filter.watched(change.path) or self.filter.watched(change.dest_path)):
            return  # elsewhere on the filesystem: not asked for, so not counted
        uid, exe = self._who(change.pid)
        for bit, action in _ORDER:
            if not change.mask & bit or not self.filter.keep(action, change.path, change.is_dir):
                continue
            file = FileEvent(
                action=action,
                path=change.path,
                dest_path=change.dest_path,
                is_dir=change.is_dir,
                pid=change.pid,
                uid=uid,
                exe=exe,
                origin="fanotify",
            )
            if action != FileEvent.DELETED:
                file.mode = mode_of(change.dest_path or change.path)
            emit(file_event(file))
