"""The file sensor without root: inotify through watchdog, asking the kernel for changes only
(never opens or reads, which on a busy folder overflow the queue), with no "who".

A watched path that is missing or unreadable, running out of inotify watches, or a kernel queue
overflow gives one clear log line and a counter, never a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
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

from agent_host.protocol import FileEvent
from agent_host.sources.live.base import Emit
from agent_host.sources.live.file_changes import DEFAULT_PATHS, ChangeFilter, file_event, mode_of

log = structlog.get_logger("agent_host")

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
    def __init__(self, sensor: InotifySensor, emit: Emit) -> None:
        self._sensor = sensor
        self._emit = emit

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._sensor.handle(event, self._emit)


class InotifySensor:
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
        path = os.fsdecode(fs_event.src_path)
        if not self.filter.keep(action, path, fs_event.is_directory):
            return
        file = FileEvent(action=action, path=path, is_dir=fs_event.is_directory, origin="inotify")
        if action == FileEvent.MOVED:
            file.dest_path = os.fsdecode(fs_event.dest_path)
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
