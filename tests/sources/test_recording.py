"""Recordings in both formats: round trips, told apart by content, and bad input named by file
and line (or record)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from agent_host.errors import RecordingError
from agent_host.protocol import Event, FileEvent, NetworkEvent, ProcessEvent, varint
from agent_host.sources import recording
from agent_host.sources.recording import parse_event_line, read_recording, write_recording
from tests.helpers import agent_host, use_plugin


def varied() -> list[Event]:
    long_argv = [f"arg{i}-{'x' * 50}" for i in range(500)]
    events = [
        Event(process=ProcessEvent(action=ProcessEvent.START, pid=1, exe="/usr/bin/ls")),
        Event(
            host="h1",
            source="s",
            process=ProcessEvent(
                action=ProcessEvent.EXIT, pid=4294967295, exe="/tmp/ü😀\u202e", exit_code=-11
            ),
        ),
        Event(process=ProcessEvent(action=ProcessEvent.START, cmdline=long_argv)),
        Event(file=FileEvent(action=FileEvent.MOVED, path="/a", dest_path="/b", is_dir=True)),
        Event(network=NetworkEvent(action=NetworkEvent.CONNECT, remote_port=443, protocol="tcp")),
    ]
    events[0].time.FromJsonString("2026-12-02T05:33:05.123456Z")
    return events


def entries(path: Path) -> list[Event | RecordingError]:
    return [entry for _, entry in read_recording(path)]


class TestRoundTrip:
    """What is written is what is read, in either format, whatever the file is called."""

    @pytest.mark.parametrize(("binary", "name"), [(False, "r.bin"), (True, "r.jsonl")])
    def test_round_trip(self, tmp_path: Path, binary: bool, name: str) -> None:
        path = tmp_path / name
        write_recording(path, varied(), binary=binary)
        assert recording.is_binary(path) is binary
        assert entries(path) == varied()


# Lines the fast path must treat exactly as json_format does: same event, or an error.
TRICKY = [
    '{"process": {"action": "START", "pid": 5, "cmdline": ["a", "b"]}}',
    '{"process": {"action": 1, "exe": null}, "host": "h"}',
    '{"process": {"pid": true}}',
    '{"process": {"pid": 1.0}}',
    '{"process": {"pid": -1}}',
    '{"process": {"pid": 4294967296}}',
    '{"process": {"action": "NOPE"}}',
    '{"process": {"cmdline": "x"}}',
    '{"process": {"cmdline": [1]}}',
    '{"process": {}, "file": {}}',
    '{"network": {"remote_port": "80"}}',
    '{"seq": "12", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T05:33:05Z", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T05:33:05.5Z", "file": {"path": "/x"}}',
    '{"time": "1969-07-20T20:17:40.123456789Z", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T05:33:05.1234567891Z", "file": {"path": "/x"}}',
    '{"time": "2026-02-30T05:33:05Z", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T25:33:05Z", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T05:33:05+01:00", "file": {"path": "/x"}}',
    '{"time": "2026-12-02T05:33:05.Z", "file": {"path": "/x"}}',
    '{"seq": "18446744073709551615", "file": {"path": "/x"}}',
    '{"seq": "18446744073709551616", "file": {"path": "/x"}}',
    '{"time": "yesterday", "file": {"path": "/x"}}',
    '{"time": 5, "file": {"path": "/x"}}',
    '{"file": {"path": "/x", "unknown": 1}}',
    '{"file": "x"}',
    "[1, 2]",
    "not json",
    '{"host": "only a host"}',
    '{"process": {"exe": "\\u0000\\ud83d\\ude00"}}',
]


class TestJsonLines:
    """The fast JSON Lines path accepts exactly what the protobuf JSON mapping accepts."""

    @pytest.mark.parametrize("line", TRICKY)
    def test_same_as_json_format(self, line: str) -> None:
        try:
            expected: Event | str = json_format.Parse(line, Event())
            if expected.WhichOneof("kind") is None:
                expected = "error"
        except json_format.ParseError:
            expected = "error"
        if expected == "error":
            with pytest.raises(RecordingError, match=r"^r\.jsonl:7: "):
                parse_event_line(line.encode(), "r.jsonl", 7)
        else:
            assert parse_event_line(line.encode(), "r.jsonl", 7) == expected

    def test_bad_lines_are_named_and_the_rest_read(self, tmp_path: Path) -> None:
        path = tmp_path / "r.jsonl"
        good = '{"file": {"path": "/x"}}'
        path.write_text(f"{good}\n\nnot json\n{good}\n" + '{"file": {"path": "' + "x" * 2**20)
        got = entries(path)
        assert [type(e).__name__ for e in got] == [
            "Event",
            "RecordingError",
            "Event",
            "RecordingError",
        ]
        assert str(got[1]).startswith(f"{path}:3: not a valid event")
        assert str(got[3]) == f"{path}:5: line longer than 1048576 bytes"


class TestBinary:
    """A bad binary record is named by its number; a cut-short one ends the recording."""

    def header(self) -> bytes:
        return recording.HEADER

    def record(self, event: Event) -> bytes:
        data = event.SerializeToString()
        return varint(len(data)) + data

    def test_a_garbage_record_is_skipped(self, tmp_path: Path) -> None:
        path = tmp_path / "r"
        event = varied()[3]
        path.write_bytes(
            self.header() + self.record(event) + b"\x03\xff\xff\xff" + self.record(event)
        )
        got = entries(path)
        assert got[0] == event and got[2] == event
        assert str(got[1]).startswith(f"{path}:2: not a valid event")

    def test_an_event_of_no_kind_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "r"
        path.write_bytes(self.header() + self.record(Event(host="h")))
        assert [str(e) for e in entries(path)] == [
            f"{path}:1: event has none of process, file, network"
        ]

    @pytest.mark.parametrize(
        ("tail", "message"),
        [
            (b"\x80", "2: cut short in its length"),
            (b"\x10abc", "2: cut short: 3 of 16 bytes"),
            (b"\xff\xff\xff\x7f", "2: record of 268435455 bytes > 1048576"),
        ],
    )
    def test_a_cut_or_oversized_record_ends_it(
        self, tmp_path: Path, tail: bytes, message: str
    ) -> None:
        path = tmp_path / "r"
        path.write_bytes(self.header() + self.record(varied()[0]) + tail)
        got = entries(path)
        assert got[0] == varied()[0]
        assert [str(e) for e in got[1:]] == [f"{path}:{message}"]

    def test_an_unknown_version_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "r"
        path.write_bytes(recording.MAGIC + (2).to_bytes(2, "big") + b"\n")
        assert [str(e) for e in entries(path)] == [f"{path}:0: binary recording version 2, not 1"]


def test_replay_reads_a_binary_recording(tmp_path: Path) -> None:
    use_plugin(tmp_path / "plugins", "tally")
    events = [Event(process=ProcessEvent(action=ProcessEvent.START, pid=i)) for i in range(50)]
    write_recording(tmp_path / "rec.jsonl", events, binary=True)  # the name does not decide
    run = agent_host(["replay", "rec.jsonl", "--plugins", "plugins", "--quiet"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.plugin("tally")["processed"] == 50
