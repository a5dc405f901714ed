"""Recordings: events on disk, in one of two formats, told apart by content, not by file name.

- **JSON Lines** (``.jsonl`` by habit): one event per line in the protobuf JSON mapping with the
  proto field names; what people write and read. Lines are parsed with orjson and the message is
  built from the parsed values directly; anything unusual (a timestamp that does not parse, a
  number as a string, a bad value) falls back to ``json_format.Parse``, which either accepts it
  exactly as the protobuf JSON mapping says or gives the error, so both paths accept the same
  lines and build the same events (a test compares them).
- **binary**: a 9-byte magic with the format version, then each event as a varint length and
  the serialized ``Event``. No per-field walk at all: decoding is ``Event.FromString``.

    magic    b"\\x93AHREC" + version (2 bytes, big-endian) + b"\\n"    (9 bytes)
    record   varint(len) + Event bytes                               (len <= MAX_EVENT_BYTES)

Both readers yield ``(position, event)`` and raise ``RecordingError`` naming the file and the
line (or record number) of a bad entry; the caller decides to skip it. A binary record that is
cut short ends the recording (nothing after it can be framed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson
from google.protobuf import json_format

from agent_host.errors import RecordingError
from agent_host.protocol import Event, event_kind, message_to_json, varint

MAGIC: Final = b"\x93AHREC"
VERSION: Final = 1
HEADER: Final = MAGIC + VERSION.to_bytes(2, "big") + b"\n"
MAX_EVENT_BYTES: Final = 1024 * 1024
MAX_LINE_BYTES: Final = MAX_EVENT_BYTES
_KINDS: Final = ("process", "file", "network")
#: The repeated fields of each kind: a string there would be taken as a list of characters.
_REPEATED: Final = {"process": ("cmdline", "parent_cmdline"), "file": (), "network": ()}
_CHUNK: Final = 4 << 20  # well over the largest record, so a refill is rare


class _UnusualLineError(Exception):
    """The fast path does not handle this line; json_format decides."""


_EPOCH_DAYS: dict[str, int] = {}


def _stamp(text: str, event: Event) -> None:
    """Set ``event.time`` from RFC 3339 ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``, the form recordings
    are written in, without Timestamp.FromJsonString (Python, several microseconds); anything
    else goes through it."""
    if len(text) < 20 or text[-1] != "Z" or text[10] != "T" or text[13] != ":":
        event.time.FromJsonString(text)
        return
    date, clock, fraction = text[:10], text[11:19], text[19:-1]
    days = _EPOCH_DAYS.get(date)
    if days is None:
        import datetime

        try:
            parsed = datetime.date.fromisoformat(date)
        except ValueError:
            event.time.FromJsonString(text)  # raises the same ValueError as the slow path
            return
        days = (parsed - datetime.date(1970, 1, 1)).days
        if len(_EPOCH_DAYS) < 4096:  # bounded: a recording spans few days
            _EPOCH_DAYS[date] = days
    hours, minutes, seconds = clock[:2], clock[3:5], clock[6:8]
    digits = fraction[1:]
    if not (
        hours.isdigit()
        and minutes.isdigit()
        and seconds.isdigit()
        and clock[5] == ":"
        and (not fraction or (fraction[0] == "." and 0 < len(digits) <= 9 and digits.isdigit()))
        and int(hours) < 24
        and int(minutes) < 60
        and int(seconds) < 60
    ):
        event.time.FromJsonString(text)
        return
    event.time.seconds = days * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    event.time.nanos = int(digits.ljust(9, "0")) if digits else 0


def _build(value: Any) -> Event:
    """An Event from parsed JSON of the usual shape; raises _UnusualLineError for anything else."""
    if type(value) is not dict:
        raise _UnusualLineError
    kinds = [k for k in _KINDS if k in value]
    if len(kinds) > 1:
        raise _UnusualLineError  # a oneof set twice: json_format reports it
    for kind in kinds:
        fields = value[kind]
        if type(fields) is not dict:
            raise _UnusualLineError
        for name in _REPEATED[kind]:
            items = fields.get(name)
            if items is not None and type(items) is not list:
                raise _UnusualLineError
    stamp = value.pop("time", None)
    seq = value.get("seq")
    if type(seq) is str and seq.isdigit():  # uint64 is a string in the JSON mapping
        value["seq"] = int(seq)
    try:
        event = Event(**value)
    except (TypeError, ValueError) as exc:
        raise _UnusualLineError from exc
    if stamp is not None:
        if type(stamp) is not str:
            raise _UnusualLineError
        try:
            _stamp(stamp, event)
        except ValueError as exc:
            raise _UnusualLineError from exc
    return event


def parse_event_line(line: str | bytes, path: str, number: int) -> Event:
    """One recording line as an Event; raises RecordingError naming the file and line."""
    if len(line) > MAX_LINE_BYTES:
        raise RecordingError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        event = _build(orjson.loads(line))
    except (orjson.JSONDecodeError, _UnusualLineError):
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        try:
            event = json_format.Parse(text, Event())
        except json_format.ParseError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "not valid JSON"
            raise RecordingError(path, number, f"not a valid event: {reason}") from exc
    if event_kind(event) is None:
        raise RecordingError(path, number, "event has none of process, file, network")
    return event


def is_binary(path: Path) -> bool:
    """Whether ``path`` holds a binary recording (by its first bytes)."""
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


class JsonLinesReader:
    """The events of a JSON Lines recording, with their line numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The open file while it is read (``tell()`` says how far: a progress bar's reading).
        self.file: IO[bytes] | None = None

    def __iter__(self) -> Iterator[tuple[int, Event | RecordingError]]:
        name = str(self.path)
        with self.path.open("rb") as f:
            self.file = f
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield number, parse_event_line(line, name, number)
                except RecordingError as exc:
                    yield number, exc


class BinaryReader:
    """The events of a binary recording, with their record numbers (from 1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The open file while it is read (``tell()`` says how far: a progress bar's reading).
        self.file: IO[bytes] | None = None

    def __iter__(self) -> Iterator[tuple[int, Event | RecordingError]]:
        name = str(self.path)
        with self.path.open("rb") as f:
            self.file = f
            header = f.read(len(HEADER))
            if header[: len(MAGIC)] != MAGIC or len(header) < len(HEADER):
                yield 0, RecordingError(name, 0, "not a binary recording (bad header)")
                return
            version = int.from_bytes(header[len(MAGIC) : len(MAGIC) + 2], "big")
            if version != VERSION:
                yield 0, RecordingError(name, 0, f"binary recording version {version}, not 1")
                return
            yield from self._records(f, name)

    def _records(self, f: IO[bytes], name: str) -> Iterator[tuple[int, Event | RecordingError]]:
        buffer = b""
        offset = 0
        number = 0
        eof = False
        while True:
            if not eof and len(buffer) - offset < 10 + MAX_EVENT_BYTES:  # room for the largest
                chunk = f.read(_CHUNK)
                eof = not chunk
                buffer = buffer[offset:] + chunk
                offset = 0
            if offset >= len(buffer):
                return
            number += 1
            length, start = 0, offset
            shift = 0
            while True:  # the varint length
                if start >= len(buffer):
                    yield number, RecordingError(name, number, "cut short in its length")
                    return
                byte = buffer[start]
                start += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
                if shift > 63:
                    yield number, RecordingError(name, number, "length is not a varint")
                    return
            if length > MAX_EVENT_BYTES:
                yield (
                    number,
                    RecordingError(name, number, f"record of {length} bytes > {MAX_EVENT_BYTES}"),
                )
                return
            end = start + length
            if end > len(buffer):
                yield (
                    number,
                    RecordingError(
                        name, number, f"cut short: {len(buffer) - start} of {length} bytes"
                    ),
                )
                return
            offset = end
            try:
                event = Event.FromString(buffer[start:end])
            except Exception as exc:  # protobuf's DecodeError, whatever the backend
                yield number, RecordingError(name, number, f"not a valid event: {exc}")
                continue
            if event_kind(event) is None:
                yield (
                    number,
                    RecordingError(name, number, "event has none of process, file, network"),
                )
                continue
            yield number, event


def read_recording(path: Path) -> JsonLinesReader | BinaryReader:
    """The entries of the recording at ``path``, whichever its format."""
    return BinaryReader(path) if is_binary(path) else JsonLinesReader(path)


class RecordingWriter:
    """Writes events as a recording; ``binary`` picks the format."""

    def __init__(self, out: IO[bytes], *, binary: bool) -> None:
        self._out = out
        self._binary = binary
        if binary:
            out.write(HEADER)

    def write(self, event: Event) -> None:
        if self._binary:
            data = event.SerializeToString()
            self._out.write(varint(len(data)) + data)
        else:
            self._out.write(message_to_json(event).encode() + b"\n")


def write_recording(path: Path, events: Iterable[Event], *, binary: bool = False) -> None:
    """Write ``events`` as a recording (used by tests, demos and benchmarks)."""
    with path.open("wb") as f:
        writer = RecordingWriter(f, binary=binary)
        for event in events:
            writer.write(event)
