"""Replay a recording (JSON Lines or binary, told apart by content; see ``recording``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from agent_host.errors import RecordingError
from agent_host.protocol import Event
from agent_host.sources.recording import (
    BinaryReader,
    JsonLinesReader,
    read_recording,
    write_recording,
)

__all__ = ["ReplaySource", "write_recording"]

log = structlog.get_logger("agent_host")


class ReplaySource:
    """Reads a recording entry by entry; a bad entry is logged once, counted, and skipped."""

    def __init__(self, path: Path, skip: int = 0) -> None:
        self.path = path
        #: Entries read so far (those skipped included): where the replay is in the recording.
        self.lines = 0
        self.bad_lines = 0
        #: The first entries not replayed (a resumed replay has done them before).
        self.skip = skip
        self._reader: JsonLinesReader | BinaryReader | None = None

    @property
    def done_fraction(self) -> float:
        """How far into the recording's bytes the reading is, 0 to 1 (for a progress bar)."""
        file = self._reader.file if self._reader is not None else None
        if file is None or file.closed:
            return 1.0 if self._reader is not None else 0.0
        size = os.fstat(file.fileno()).st_size
        return min(file.tell() / size, 1.0) if size else 1.0

    async def __aiter__(self) -> AsyncIterator[Event]:
        source = f"replay:{self.path.name}"
        self._reader = read_recording(self.path)
        for _, entry in self._reader:
            self.lines += 1
            if self.lines <= self.skip:
                continue
            if isinstance(entry, RecordingError):
                self.bad_lines += 1
                log.warning("bad event line skipped", error=str(entry))
                continue
            if not entry.source:
                entry.source = source
            yield entry
