"""Replay a recording: JSON Lines of events in the protobuf JSON mapping (proto field names)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import structlog
from google.protobuf import json_format

from agent_host.errors import RecordingError
from agent_host.protocol import Event, event_kind, message_to_json

log = structlog.get_logger("agent_host")

MAX_LINE_BYTES: Final = 1024 * 1024


def parse_event_line(line: str, path: str, number: int) -> Event:
    """One recording line as an Event; raises RecordingError naming the file and line."""
    if len(line) > MAX_LINE_BYTES:
        raise RecordingError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        event = json_format.Parse(line, Event())
    except json_format.ParseError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not valid JSON"
        raise RecordingError(path, number, f"not a valid event: {reason}") from exc
    if event_kind(event) is None:
        raise RecordingError(path, number, "event has none of process, file, network")
    return event


class ReplaySource:
    """Reads a recording line by line; a bad line is logged once, counted, and skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self.bad_lines = 0

    async def __aiter__(self) -> AsyncIterator[Event]:
        name = str(self.path)
        source = f"replay:{self.path.name}"
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                self.lines += 1
                try:
                    event = parse_event_line(line, name, number)
                except RecordingError as exc:
                    self.bad_lines += 1
                    log.warning("bad event line skipped", error=str(exc))
                    continue
                if not event.source:
                    event.source = source
                yield event


def write_recording(path: Path, events: list[Event]) -> None:
    """Write ``events`` as a recording (used by tests, demos and ``agent-host record``)."""
    with path.open("w", encoding="utf-8") as f:
        f.writelines(message_to_json(e) + "\n" for e in events)
