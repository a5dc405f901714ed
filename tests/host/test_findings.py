"""The findings file is written in the protobuf JSON mapping, exactly as json_format would."""

from __future__ import annotations

import json

import pytest

from agent_host.host.findings import finding_json
from agent_host.protocol import Finding, message_to_json


def findings() -> list[Finding]:
    full = Finding(
        id="ab12",
        plugin="sigma",
        plugin_version="1.2.3",
        rule="r\n\x1b[31m",
        severity=Finding.HIGH,
        message='Ünïcode 😀 "quoted" \u2028',
        event_ids=[1, 2**64 - 1],
        attributes={"k": "v", "": "empty key", "ctl": "\x00\x07"},
        techniques=["T1059.004", "T1036"],
        host="h",
    )
    full.time.FromJsonString("2026-12-02T05:33:05.123456789Z")
    whole_second = Finding(rule="x", severity=Finding.INFO)
    whole_second.time.FromJsonString("2026-12-02T05:33:05Z")
    return [full, whole_second, Finding(), Finding(severity=7)]


@pytest.mark.parametrize("finding", findings(), ids=range(4))
def test_same_as_json_format(finding: Finding) -> None:
    assert json.loads(finding_json(finding)) == json.loads(message_to_json(finding))
