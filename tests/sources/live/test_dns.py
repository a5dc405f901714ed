"""DNS answers are untrusted bytes from the network: parsed, or refused, never a crash."""

from __future__ import annotations

import random
import struct

import pytest

from agent_host.sources.live.dns import answers

RESPONSE = (
    b"\x12\x34\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00"
    b"\x04pool\x07example\x03org\x00\x00\x01\x00\x01"
    b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xcb\x00\x71\x05"
    b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x10" + bytes(15) + b"\x01"
)


def test_a_and_aaaa_records_name_their_addresses() -> None:
    assert answers(RESPONSE) == [("203.0.113.5", "pool.example.org"), ("::1", "pool.example.org")]
    assert answers(RESPONSE[:2] + b"\x01\x00" + RESPONSE[4:]) == []  # a query, not an answer


def test_hostile_messages_are_refused_with_a_known_error() -> None:
    loop = b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\xc0\x0c"  # a name pointing at itself
    chooser = random.Random(7)
    cases = [loop, RESPONSE[:20], RESPONSE[:-3]]
    for _ in range(2000):
        data = bytearray(RESPONSE)
        for _ in range(chooser.randint(1, 8)):
            data[chooser.randrange(len(data))] = chooser.randrange(256)
        cases.append(bytes(data[: chooser.randint(0, len(data))]))
    for case in cases:
        try:
            answers(case)
        except (ValueError, struct.error, IndexError):
            pass  # counted as malformed by the sensor
        except Exception as exc:  # pragma: no cover - the failure this test is for
            pytest.fail(f"{type(exc).__name__} on {case!r}")
