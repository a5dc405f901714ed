"""The finding pipeline's pure pieces: the check of one finding, the per-event cap, the
deduplicator, and the stamps the host puts on what a plugin reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent_host.host import findings as findings_module
from agent_host.host.exports import sender as sender_module
from agent_host.host.exports.syslog import SyslogOutput
from agent_host.host.findings import (
    RESERVED_ATTRIBUTES,
    CollectingSink,
    Deduplicator,
    FindingPipeline,
    JsonLinesSink,
    Source,
    check,
)
from agent_host.host.stats import PluginStats
from agent_host.protocol import Finding


def given_up_to(last: int) -> Source:
    return Source("p", "1.0", "sha256:ab", "", 3, PluginStats(), lambda seq: 1 <= seq <= last)


def finding(**fields: object) -> Finding:
    base: dict[str, object] = {"rule": "r", "severity": Finding.HIGH, "event_ids": [1]}
    return Finding(**{**base, **fields})  # type: ignore[arg-type]


class TestCheck:
    """check names why a finding is refused, and passes one that is well formed."""

    def test_a_well_formed_finding_passes(self) -> None:
        assert check(finding(attributes={"path": "/tmp/x"}), lambda seq: True) is None

    @pytest.mark.parametrize(
        ("fields", "why"),
        [
            ({"rule": ""}, "rule must be 1 to 256 characters"),
            ({"rule": "r" * 257}, "rule must be 1 to 256 characters"),
            ({"severity": 0}, "unknown severity 0"),
            ({"severity": 9}, "unknown severity 9"),
            ({"message": "m" * 100_000}, "message longer than"),
            ({"event_ids": list(range(1, 2_000))}, "more than"),
            ({"techniques": ["T1"] * 33}, "more than 32 techniques"),
            ({"attributes": {"k": "v" * 100_000}}, "attribute over"),
        ],
        ids=[
            "empty rule",
            "long rule",
            "severity 0",
            "severity 9",
            "long message",
            "many events",
            "many techniques",
            "huge attribute",
        ],
    )
    def test_each_bound_is_named(self, fields: dict[str, object], why: str) -> None:
        problem = check(finding(**fields), lambda seq: True)
        assert problem is not None and why in problem

    @pytest.mark.parametrize("key", sorted(RESERVED_ATTRIBUTES))
    def test_a_key_named_like_a_stamp_is_refused(self, key: str) -> None:
        problem = check(finding(attributes={key: "forged"}), lambda seq: True)
        assert problem == f"attribute key {key!r} is reserved for what the host stamps"

    def test_an_event_it_was_not_given_is_named(self) -> None:
        problem = check(finding(event_ids=[1, 7, 9]), lambda seq: seq == 1)
        assert problem == "refers to events it was not given: [7, 9]"


class TestDeduplicator:
    """An id is new once; the oldest is forgotten past the capacity, the recent one kept."""

    def test_a_repeat_is_not_new(self) -> None:
        seen = Deduplicator(capacity=4)
        assert seen.first_time("a") and not seen.first_time("a")

    def test_bounded_oldest_forgotten_first(self) -> None:
        seen = Deduplicator(capacity=2)
        for fid in "abc":
            assert seen.first_time(fid)
        assert seen.first_time("a")  # forgotten: it was the oldest
        assert not seen.first_time("c")

    def test_a_repeat_refreshes_its_place(self) -> None:
        seen = Deduplicator(capacity=2)
        seen.first_time("a")
        seen.first_time("b")
        seen.first_time("a")  # now the most recent
        seen.first_time("c")  # pushes out b, not a
        assert not seen.first_time("a")
        assert seen.first_time("b")


class TestPipeline:
    """Cap, check, stamp and dedup, counted in the plugin's stats."""

    def test_the_cap_drops_only_the_flooded_events_findings(self) -> None:
        sink = CollectingSink()
        source = given_up_to(10)
        flood = [finding(rule=f"r{i}", event_ids=[2]) for i in range(4)]  # 4 > cap of 3
        fine = [finding(rule=f"s{i}", event_ids=[3]) for i in range(3)]
        FindingPipeline(sink, "h").accept(source, [*flood, *fine])
        assert sorted(f.rule for f in sink.findings) == ["s0", "s1", "s2"]
        assert (source.stats.rejected_findings, source.stats.findings) == (4, 3)

    def test_the_host_stamps_over_what_the_plugin_wrote(self) -> None:
        sink = CollectingSink()
        forged = finding(plugin="other", plugin_version="9", host="elsewhere", id="x")
        FindingPipeline(sink, "here").accept(given_up_to(1), [forged])
        (out,) = sink.findings
        assert (out.plugin, out.plugin_version, out.host) == ("p", "1.0", "here")
        assert out.plugin_measurement == "sha256:ab" and out.id != "x"

    def test_the_same_finding_twice_is_written_once(self) -> None:
        sink = CollectingSink()
        source = given_up_to(1)
        pipeline = FindingPipeline(sink, "h")
        pipeline.accept(source, [finding()])
        pipeline.accept(source, [finding()])  # a redelivered event's finding
        assert len(sink.findings) == 1
        assert source.stats.duplicate_findings == 1


def test_each_finding_is_serialized_once_for_the_file_and_every_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file and two outputs take the same JSON: one serialization a finding, not three."""
    made: list[str] = []
    real = findings_module.finding_json

    def counted(f: Finding) -> bytes:
        made.append(f.id)
        return real(f)

    monkeypatch.setattr(findings_module, "finding_json", counted)
    monkeypatch.setattr(sender_module, "finding_json", counted, raising=False)
    pipeline = FindingPipeline(JsonLinesSink(tmp_path / "f.jsonl", terminal=None), "host")
    spooled = []

    async def accept() -> None:
        for n in range(2):
            output = SyslogOutput(f"unix:{tmp_path}/none", tmp_path / f"out{n}", 1)
            pipeline.listeners.append(output.findings_written)
            spooled.append(output)
        pipeline.accept(given_up_to(3), [finding(event_ids=[1]), finding(event_ids=[2])])

    asyncio.run(accept())
    assert len(made) == 2 and len(set(made)) == 2
    file_lines = (tmp_path / "f.jsonl").read_bytes().splitlines()
    for output in spooled:  # the same bytes in each output's spool as in the file
        assert [line.split(b" ", 2)[2] for line in output.spool.peek(10)] == file_lines
        output.spool.close()
