"""The plugin-authoring guide describes exactly the event model that protos/ defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor

from agent_host.protocol import Event, FileEvent, Finding, NetworkEvent, ProcessEvent
from agent_host.sources.live.network import _PROTOCOLS
from agent_host.sources.live.syscalls import _address

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugin-guide.md"


def documented_fields(heading: str) -> list[str]:
    """The field names in the table under ``### heading`` of the guide."""
    text = GUIDE.read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("heading", "message"),
    [
        ("Event", Event.DESCRIPTOR),
        ("ProcessEvent", ProcessEvent.DESCRIPTOR),
        ("FileEvent", FileEvent.DESCRIPTOR),
        ("NetworkEvent", NetworkEvent.DESCRIPTOR),
        ("Finding (what the host writes)", Finding.DESCRIPTOR),
    ],
)
def test_guide_tables_match_the_protos(heading: str, message: Descriptor) -> None:
    assert documented_fields(heading) == [f.name for f in message.fields]


def test_enum_values_are_documented() -> None:
    text = GUIDE.read_text()
    for enum in (ProcessEvent.Action, FileEvent.Action, NetworkEvent.Action, Finding.Severity):
        for name in (value.name for value in enum.DESCRIPTOR.values):
            if not name.endswith("UNSPECIFIED"):
                assert f"`{name}`" in text, name


def test_every_protocol_a_sensor_writes_is_documented() -> None:
    """The socket table's names and the audited calls' families, each in the guide's row (it
    once listed only tcp, udp, tcp6 and udp6, while audited events carry ip and ip6)."""
    v4 = bytes.fromhex("0200") + (4444).to_bytes(2, "big") + bytes([10, 0, 0, 1])
    v6 = bytes.fromhex("0a00") + (4444).to_bytes(2, "big") + bytes(4) + bytes(15) + b"\x01"
    written = set(_PROTOCOLS.values()) | {
        family
        for raw in (v4, v6)
        if (found := _address(raw.hex().encode()))
        for family in found[:1]
    }
    assert {"ip", "ip6"} <= written
    row = next(line for line in GUIDE.read_text().splitlines() if line.startswith("| `protocol`"))
    assert {name for name in written if f"`{name}`" not in row} == set()
