"""Replay a recording (JSON Lines or binary, told apart by content; see ``recording``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from agent_host.errors import RecordingError
from agent_host.protocol import Event
from agent_host.sources.recording import read_recording, write_recording

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

    async def __aiter__(self) -> AsyncIterator[Event]:
        source = f"replay:{self.path.name}"
        for _, entry in read_recording(self.path):
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
