"""An append-only file of records and how far of it was sent; bounded in bytes.

What would pass the bound is dropped and counted, never the host blocked. Once everything is
sent the file is emptied. A spool left by a run that stopped while its receiver was away is
sent by the next run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class Spool:
    """Records (one line each, no newline inside) in ``folder/NAME.spool``, the offset of the
    first one not yet sent in ``folder/NAME.offset``."""

    def __init__(self, folder: Path, max_bytes: int, name: str = "export") -> None:
        self._path = folder / f"{name}.spool"
        self._offset_path = folder / f"{name}.offset"
        self._max_bytes = max_bytes
        # 0600 whatever the umask: the spool holds findings.
        fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "ab+")
        self.offset = self._read_offset()
        self.dropped = 0

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    @property
    def size(self) -> int:
        return self._file.seek(0, os.SEEK_END)

    @property
    def pending(self) -> bool:
        return self.offset < self.size

    def append(self, records: Sequence[bytes], *, past_bound: bool = False) -> None:
        """Add records at the end; those past the bound are dropped and counted (unless
        ``past_bound``: the run's one summary, which says what was dropped)."""
        room = self._max_bytes - self.size
        data = bytearray()
        for record in records:
            if len(data) + len(record) + 1 > room and not past_bound:
                self.dropped += 1
                continue
            data += record + b"\n"
        if data:
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)
            self._file.flush()

    def peek(self, limit: int = 1) -> list[bytes]:
        """The next ``limit`` records to send, at most (without their newlines)."""
        self._file.seek(self.offset)
        records = []
        for _ in range(limit):
            line = self._file.readline()
            if not line.endswith(b"\n"):
                break
            records.append(line[:-1])
        return records

    def advance(self, records: Sequence[bytes]) -> None:
        """``records`` (the next ones) were taken; empty the spool once all were."""
        self.offset += sum(len(record) + 1 for record in records)
        if self.offset >= self.size:
            self._file.truncate(0)
            self.offset = 0
        self._offset_path.write_text(str(self.offset))

    def close(self) -> None:
        self._file.close()
