"""The file sensor: created, modified, deleted and moved files under configured paths (inotify).

Exclusions are globs on the full path. A storm of modifications to one file (a log being
written, a download) is coalesced: at most one MODIFIED per file per ``coalesce_s``, the rest
counted. A watched path that is missing or unreadable, or running out of inotify watches, gives
one clear log line and a counter, never a crash.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live.base import Emit

log = structlog.get_logger("agent_host")

DEFAULT_PATHS: Final = ("/tmp", "/etc", "/home")  # noqa: S108  # watched, never written
_ACTIONS: Final = {
    "created": FileEvent.CREATED,
    "modified": FileEvent.MODIFIED,
    "deleted": FileEvent.DELETED,
    "moved": FileEvent.MOVED,
}
_COALESCE_MEMORY: Final = 16_384  # files remembered for coalescing; bounded


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)


class _Handler(FileSystemEventHandler):
    def __init__(self, sensor: FileSensor, emit: Emit) -> None:
        self._sensor = sensor
        self._emit = emit

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._sensor.handle(event, self._emit)


class FileSensor:
    """Watches ``paths`` recursively with inotify (through watchdog)."""

    name = "file"

    def __init__(
        self,
        paths: Sequence[str] = DEFAULT_PATHS,
        exclude: Sequence[str] = (),
        coalesce_s: float = 1.0,
    ) -> None:
        self.paths = list(paths)
        self.exclude = list(exclude)
        self.coalesce_s = coalesce_s
        self.counters: Counter[str] = Counter()
        self._last_modified: dict[str, float] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def _excluded(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.exclude)

    def handle(self, fs_event: FileSystemEvent, emit: Emit) -> None:
        action = _ACTIONS.get(fs_event.event_type)
        if action is None:
            return  # opened, closed: not what this sensor reports
        path = _text(fs_event.src_path)
        if self._excluded(path):
            self.counters["excluded"] += 1
            return
        if action == FileEvent.MODIFIED:
            if fs_event.is_directory:
                return  # a directory's mtime changes with each entry: the entries say more
            now = time.monotonic()
            with self._lock:
                last = self._last_modified.get(path)
                if last is not None and now - last < self.coalesce_s:
                    self.counters["coalesced"] += 1
                    return
                if len(self._last_modified) >= _COALESCE_MEMORY:
                    self._last_modified.clear()
                self._last_modified[path] = now
        file = FileEvent(action=action, path=path, is_dir=fs_event.is_directory)
        if action == FileEvent.MOVED:
            file.dest_path = _text(fs_event.dest_path)
        event = Event(source="sensor:file", file=file)
        event.time.GetCurrentTime()
        emit(event)

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
                observer.schedule(handler, path, recursive=True)
                watching += 1
            except OSError as exc:
                self._watch_failed(path, exc)
        if not watching:
            log.warning("file sensor: nothing to watch", paths=self.paths)
            stop.wait()
            return
        observer.start()
        self.ready.set()
        try:
            while not stop.wait(0.5):
                if not observer.is_alive():
                    raise RuntimeError("inotify observer thread died")
        finally:
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
