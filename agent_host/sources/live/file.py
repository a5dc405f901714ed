"""The file sensor: created, modified, deleted, moved files and changed attributes under
configured paths.

As root it is fanotify (``filesystem.py``): whole filesystems, with the pid, uid and executable
of the process that made each change. Otherwise it is inotify through watchdog, asking the
kernel for changes only (never opens or reads, which on a busy folder overflow the queue), with
no "who". ``file_sensor`` picks, and the log says which and why.

Exclusions are globs on the full path. A storm of modifications to one file (a log being
written, a download) is coalesced: at most one MODIFIED per file per ``coalesce_s``, the rest
counted. A watched path that is missing or unreadable, running out of inotify watches, or a
kernel queue overflow gives one clear log line and a counter, never a crash.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live.base import Emit, Sensor
from agent_host.sources.live.execs import ExecTable

log = structlog.get_logger("agent_host")

DEFAULT_PATHS: Final = ("/tmp", "/etc", "/home", "/root")  # noqa: S108  # watched, never written
_ACTIONS: Final = {
    "created": FileEvent.CREATED,
    "modified": FileEvent.MODIFIED,
    "deleted": FileEvent.DELETED,
    "moved": FileEvent.MOVED,
    "attrib": FileEvent.ATTRIBUTES,
}
#: What inotify is asked for: changes only. Opens and closes are what overflowed its queue.
_CHANGES_ONLY: Final = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileAttribEvent,
]
_COALESCE_MEMORY: Final = 16_384  # files remembered for coalescing; bounded


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


def mode_of(path: str) -> int:
    """The file's st_mode now (not following a symlink), 0 if it is gone."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


class ChangeFilter:
    """What both file sensors keep: watched, not excluded, not a repeat within ``coalesce_s``."""

    def __init__(self, paths: Sequence[str], exclude: Sequence[str], coalesce_s: float) -> None:
        self.paths = [os.path.normpath(p) for p in paths]
        # Asked of every change on a whole filesystem (fanotify): the prefixes made once.
        self._prefixes = tuple(p.rstrip("/") + "/" for p in self.paths)
        self.exclude = list(exclude)
        self.coalesce_s = coalesce_s
        self.counters: Counter[str] = Counter()
        self._last_modified: dict[str, float] = {}
        self._lock = threading.Lock()

    def watched(self, path: str) -> bool:
        return path.startswith(self._prefixes) or path in self.paths

    def keep(self, action: int, path: str, is_dir: bool) -> bool:
        """False for an excluded path or a repeated modification (each counted)."""
        if any(fnmatch.fnmatch(path, pattern) for pattern in self.exclude):
            self.counters["excluded"] += 1
            return False
        if action != FileEvent.MODIFIED:
            return True
        if is_dir:
            return False  # a directory's mtime changes with each entry: the entries say more
        now = time.monotonic()
        with self._lock:
            last = self._last_modified.get(path)
            if last is not None and now - last < self.coalesce_s:
                self.counters["coalesced"] += 1
                return False
            if len(self._last_modified) >= _COALESCE_MEMORY:
                self._last_modified.clear()
            self._last_modified[path] = now
        return True


def file_event(file: FileEvent) -> Event:
    event = Event(source="sensor:file", file=file)
    event.time.GetCurrentTime()
    return event


def file_sensor(
    paths: Sequence[str] = DEFAULT_PATHS,
    exclude: Sequence[str] = (),
    coalesce_s: float = 1.0,
    execs: ExecTable | None = None,
) -> Sensor:
    """fanotify where this process may use it (root), else inotify; logged either way.
    ``execs`` names writers that have exited by the time their change is read."""
    from agent_host.sources.live.filesystem import FanotifySensor, fanotify_unavailable

    why = fanotify_unavailable()
    if why is None:
        return FanotifySensor(paths, exclude, coalesce_s, execs)
    log.warning(
        "file sensor: fanotify unavailable, using inotify (changes only, without the pid, "
        "uid or executable that made them)",
        reason=why,
    )
    return FileSensor(paths, exclude, coalesce_s)


class _Overflows(logging.Filter):
    """Counts watchdog's "Inotify queue overflowed" records: it reports them only by logging."""

    def __init__(self, counters: Counter[str]) -> None:
        super().__init__()
        self._counters = counters

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflowed" in record.getMessage():
            self._counters["overflows"] += 1
        return True


class _Handler(FileSystemEventHandler):
    def __init__(self, sensor: FileSensor, emit: Emit) -> None:
        self._sensor = sensor
        self._emit = emit

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._sensor.handle(event, self._emit)


class FileSensor:
    """Watches ``paths`` recursively with inotify (through watchdog), changes only."""

    name = "file"

    def __init__(
        self,
        paths: Sequence[str] = DEFAULT_PATHS,
        exclude: Sequence[str] = (),
        coalesce_s: float = 1.0,
    ) -> None:
        self.paths = list(paths)
        self.filter = ChangeFilter(paths, exclude, coalesce_s)
        self.counters = self.filter.counters
        self.ready = threading.Event()

    def handle(self, fs_event: FileSystemEvent, emit: Emit) -> None:
        action = _ACTIONS.get(fs_event.event_type)
        if action is None:
            return  # opened, closed: not what this sensor reports
        path = _text(fs_event.src_path)
        if not self.filter.keep(action, path, fs_event.is_directory):
            return
        file = FileEvent(action=action, path=path, is_dir=fs_event.is_directory, origin="inotify")
        if action == FileEvent.MOVED:
            file.dest_path = _text(fs_event.dest_path)
        if action != FileEvent.DELETED:
            file.mode = mode_of(file.dest_path or path)
        emit(file_event(file))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        observer = Observer()
        handler = _Handler(self, emit)
        watching = 0
        for path in self.paths:
            if not Path(path).is_dir():
                self.counters["missing_paths"] += 1
                log.warning("file sensor: path to watch is missing or not a folder", path=path)
                continue
            try:
                observer.schedule(handler, path, recursive=True, event_filter=_CHANGES_ONLY)
                watching += 1
            except OSError as exc:
                self._watch_failed(path, exc)
        if not watching:
            log.warning("file sensor: nothing to watch", paths=self.paths)
            stop.wait()
            return
        overflows = _Overflows(self.counters)
        watchdog_log = logging.getLogger("watchdog.observers.inotify_c")
        watchdog_log.addFilter(overflows)
        observer.start()
        self.ready.set()
        reported = 0
        try:
            while not stop.wait(0.5):
                if not observer.is_alive():
                    raise RuntimeError("inotify observer thread died")
                if self.counters["overflows"] > reported:
                    reported = self.counters["overflows"]
                    log.warning(
                        "file sensor: inotify queue overflowed, changes were lost",
                        overflows=reported,
                    )
        finally:
            watchdog_log.removeFilter(overflows)
            observer.stop()
            observer.join(timeout=5)

    def _watch_failed(self, path: str, exc: OSError) -> None:
        if exc.errno == errno.ENOSPC:
            self.counters["watch_limit"] += 1
            log.error(
                "file sensor: out of inotify watches; raise fs.inotify.max_user_watches", path=path
            )
        elif exc.errno in (errno.EACCES, errno.EPERM):
            self.counters["permission_denied"] += 1
            log.warning("file sensor: permission denied", path=path)
        else:
            self.counters["watch_errors"] += 1
            log.warning("file sensor: cannot watch", path=path, error=str(exc))
