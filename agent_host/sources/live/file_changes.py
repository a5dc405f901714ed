"""What both file sensors share: the folders watched by default, the filter of changes
(watched, not excluded, not a repeat), and the event a change becomes.

As root the file sensor is fanotify (``fanotify_sensor.py``): whole filesystems, with the pid,
uid and executable of the process that made each change. Otherwise it is inotify through
watchdog (``inotify_sensor.py``), changes only, with no "who". ``live.file_sensor`` picks, and
the log says which and why.

Exclusions are globs on the full path. A storm of modifications to one file (a log being
written, a download) is coalesced: at most one MODIFIED per file per ``coalesce_s``, the rest
counted.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Final

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live.base import stamp

DEFAULT_PATHS: Final = ("/tmp", "/etc", "/home", "/root")  # noqa: S108  # watched, never written
_COALESCE_MEMORY: Final = 16_384  # files remembered for coalescing; bounded


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
    stamp(event)
    return event
