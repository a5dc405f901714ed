"""Ransomware-like bursts: many distinct files changed within a short window.

Ransomware walks a tree, rewriting or renaming each file it encrypts. Counting distinct files
changed per folder (the first ``depth`` levels of the path) and per process (when the sensor
knows it) within a sliding window catches that pattern without looking inside any file. With
``entropy_check``, a modified file whose first bytes look random (close to 8 bits per byte) is
counted as evidence and named in the finding. One finding per key per window (MITRE ATT&CK T1486,
Data Encrypted for Impact).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from agent_host.sdk import Event, FileAction, Finding, Plugin, Severity, open_file

CHANGES = (FileAction.MODIFIED, FileAction.DELETED, FileAction.MOVED)
_FRESH_MEMORY = 65_536


def shannon_entropy(data: bytes) -> float:
    """Bits of entropy per byte of ``data`` (0 for empty)."""
    if not data:
        return 0.0
    counts = Counter(data)
    total = len(data)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


class _Window:
    """Distinct files changed under one key within the last ``window_s``."""

    def __init__(self) -> None:
        self.changes: deque[tuple[float, str, int]] = deque()  # (time, path, event seq)
        self.files: Counter[str] = Counter()
        self.alerted_until = 0.0

    def add(self, now: float, path: str, seq: int, window_s: float) -> None:
        self.changes.append((now, path, seq))
        self.files[path] += 1
        while self.changes and now - self.changes[0][0] > window_s:
            _, old, _ = self.changes.popleft()
            self.files[old] -= 1
            if not self.files[old]:
                del self.files[old]


class RansomwareBurst(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        self.threshold = int(config.get("threshold", 100))
        self.window_s = float(config.get("window_s", 10.0))
        self.depth = int(config.get("depth", 3))
        self.entropy_check = bool(config.get("entropy_check", False))
        self.entropy_threshold = float(config.get("entropy_threshold", 7.5))
        self.sample_bytes = int(config.get("entropy_sample_bytes", 4096))
        self.windows: dict[str, _Window] = {}
        self.high_entropy: deque[str] = deque(maxlen=20)
        # Files created within the window: writing, renaming or removing a file one has just
        # made is what a checkout, an install or a build does; ransomware changes files that
        # were there before it. Bounded.
        self.fresh: dict[str, float] = {}
        # When each process last created a file. Deleting old files is what a clean-up does
        # (pytest's, make clean, rm -rf build); deleting them while writing new ones is what
        # ransomware that writes encrypted copies does. So a deletion counts only from a
        # process that is creating files too (or one the sensor cannot name).
        self.creating: dict[int, float] = {}

    def _keys(self, path: str, pid: int) -> list[str]:
        parts = PurePosixPath(path).parent.parts
        keys = [f"folder:{PurePosixPath(*parts[: self.depth + 1])}"]
        if pid:
            keys.append(f"pid:{pid}")
        return keys

    def _looks_encrypted(self, path: str) -> bool:
        try:
            with open_file(path) as f:
                sample = f.read(self.sample_bytes)
        except OSError:
            return False  # gone or unreadable: no evidence either way
        return len(sample) >= 256 and shannon_entropy(sample) >= self.entropy_threshold

    def _is_fresh(self, file: Any, now: float) -> bool:
        """Remember a creation; True for a change to a file created within the window."""
        if file.action == FileAction.CREATED:
            if len(self.fresh) >= _FRESH_MEMORY:
                self.fresh = {p: t for p, t in self.fresh.items() if now - t <= self.window_s}
                if len(self.fresh) >= _FRESH_MEMORY:
                    self.fresh.clear()
            self.fresh[file.path] = now
            if file.pid:
                if len(self.creating) >= _FRESH_MEMORY:
                    self.creating.clear()
                self.creating[file.pid] = now
            return True
        created = self.fresh.get(file.path)
        if created is None or now - created > self.window_s:
            return False
        if file.action == FileAction.MOVED:
            self.fresh[file.dest_path] = created  # an atomic write: still the new file
        return True

    def on_event(self, event: Event) -> Iterator[Finding]:
        file = event.file
        if file.is_dir:
            return
        now = time.monotonic()
        if self._is_fresh(file, now) or file.action not in CHANGES:
            return
        if file.action == FileAction.DELETED and file.pid:
            created = self.creating.get(file.pid)
            if created is None or now - created > self.window_s:
                return
        path = file.dest_path if file.action == FileAction.MOVED else file.path
        if (
            self.entropy_check
            and file.action in (FileAction.MODIFIED, FileAction.MOVED)
            and self._looks_encrypted(path)
        ):
            self.high_entropy.append(path)
        if len(self.windows) > 10_000:  # bounded: forget quiet keys
            self.windows = {
                k: w
                for k, w in self.windows.items()
                if w.changes and now - w.changes[-1][0] <= self.window_s
            }
        bursts = []
        for key in self._keys(file.path, file.pid):
            window = self.windows.setdefault(key, _Window())
            window.add(now, file.path, event.seq, self.window_s)
            if len(window.files) >= self.threshold and now >= window.alerted_until:
                window.alerted_until = now + self.window_s
                bursts.append((key, window))
        if bursts:  # one burst seen by folder and by process is one finding
            yield self._finding(*bursts[0])

    def _finding(self, key: str, window: _Window) -> Finding:
        kind, _, value = key.partition(":")
        where = f"under {value}" if kind == "folder" else f"by pid {value}"
        seqs = sorted({seq for _, _, seq in window.changes})[-50:]
        attributes = {
            "key": key,
            "distinct_files": str(len(window.files)),
            "window_s": f"{self.window_s:g}",
            "examples": ", ".join(list(window.files)[:5]),
        }
        if self.high_entropy:
            attributes["high_entropy_files"] = ", ".join(self.high_entropy)
        return Finding(
            rule="file_change_burst",
            severity=Severity.CRITICAL if self.high_entropy else Severity.HIGH,
            message=f"{len(window.files)} files changed {where} within {self.window_s:g}s",
            event_ids=tuple(seqs),
            attributes=attributes,
            techniques=("T1486",),
        )
