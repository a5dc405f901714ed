"""The wire protocol: generated code, framing, and the JSON Lines mapping."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from agent_host.protocol import (
    Event,
    EventBatch,
    FileEvent,
    Finding,
    HostMessage,
    batch_frame,
    batch_payload,
    event_kind,
    event_record,
    message_from_json,
    message_to_json,
)
from tests.helpers import exec_event

REPO = Path(__file__).resolve().parent.parent


def _load_generator():  # scripts/ is not a package; load the script as a module
    spec = importlib.util.spec_from_file_location(
        "generate_protocol", REPO / "scripts" / "generate_protocol.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_protocol"] = module
    spec.loader.exec_module(module)
    return module


class TestGeneratedCode:
    """agent_host/protocol/v1 is exactly what protos/ generates."""

    def test_regenerating_changes_nothing(self, tmp_path: Path) -> None:
        pytest.importorskip("grpc_tools")
        generated = _load_generator().generate(tmp_path)
        committed = REPO / "agent_host" / "protocol" / "v1"
        names = sorted(p.name for p in generated.iterdir())
        assert names == sorted(p.name for p in committed.iterdir() if p.name != "__pycache__")
        _, mismatch, errors = filecmp.cmpfiles(generated, committed, names, shallow=False)
        assert (mismatch, errors) == ([], []), "run: python scripts/generate_protocol.py"


class TestFraming:
    """A batch framed from pre-serialized events is the HostMessage a worker expects."""

    def test_frame_parses_as_host_message_batch(self) -> None:
        events = [exec_event(f"/usr/bin/e{i}", pid=i) for i in range(300)]
        for i, e in enumerate(events, 1):
            e.seq = i
        frame = batch_frame(
            batch_payload(77, [event_record(e.SerializeToString()) for e in events])
        )
        message = HostMessage.FromString(frame)
        assert message.WhichOneof("body") == "batch"
        assert message.batch == EventBatch(batch_id=77, events=events)

    def test_large_batch_uses_multibyte_lengths(self) -> None:
        big = Event(seq=1, file=FileEvent(path="/x" * 100_000))
        frame = batch_frame(batch_payload(2**40, [event_record(big.SerializeToString())]))
        assert HostMessage.FromString(frame).batch.events[0] == big
        assert HostMessage.FromString(frame).batch.batch_id == 2**40


class TestJsonMapping:
    """Recordings and findings use the protobuf JSON mapping with proto field names."""

    def test_event_round_trip_uses_proto_names(self) -> None:
        event = exec_event("/tmp/x")
        event.process.parent_cmdline.append("bash")
        line = message_to_json(event)
        assert "\n" not in line
        assert '"parent_exe"' in line and '"START"' in line
        assert json_format.Parse(line, Event()) == event
        assert message_from_json(line, Event()) == event

    def test_finding_uses_proto_names(self) -> None:
        finding = Finding(rule="r", severity=Finding.HIGH, event_ids=[3, 4], techniques=["T1"])
        line = message_to_json(finding)
        assert '"event_ids"' in line and '"HIGH"' in line and '"rule"' in line

    def test_event_kind(self) -> None:
        assert event_kind(exec_event("/bin/true")) == "process"
        assert event_kind(Event(file=FileEvent(path="/a"))) == "file"
        assert event_kind(Event()) is None
