"""Staged rollout with real hosts and workers: a validated new version runs in shadow with its
findings kept apart; a fault there rolls it back for good (until its content changes); one
that passes is promoted at a cut that gives every event's findings to exactly one version; and
a promoted version that then fails is replaced by its last known good by the host itself."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.store import StateStore
from agent_host.host.supervisor import Supervisor
from tests.helpers import exec_event, make_plugin

#: Every version reports every exec under the same rule; the message names the version.
VERSION = """\
import os
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_event(self, event):
        if event.process.exe == "{crash_on}":
            os._exit(3)
        findings = [Finding(rule="exec", severity="info", message="{version}")]
        if {extra} and event.process.pid % 10 == 0:
            findings.append(Finding(rule="tenth", severity="info", message="{version}"))
        return findings
"""


def version(name: str, crash_on: str = "", extra: bool = False) -> str:
    return VERSION.format(version=name, crash_on=crash_on or "-", extra=extra)


def rewrite(folder: Path, code: str, number: str) -> Manifest:
    """The plugin folder, changed in place to a new version (as a package update does)."""
    (folder / "detector.py").write_text(code)
    toml = folder / "plugin.toml"
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{number}"', toml.read_text()))
    return Manifest.load(toml)


async def until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def exec_findings(sink: CollectingSink) -> Counter[int]:
    return Counter(f.event_ids[0] for f in sink.findings if f.rule == "exec")


def history(state: Path, name: str) -> list[tuple[str, str]]:
    store = StateStore(state)
    try:
        return [(e.version, e.what) for e in store.history(name)]
    finally:
        store.close()


def test_a_fault_in_shadow_rolls_back_with_none_of_its_findings(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path / "plugins", "rolling", version("v1"))
    sink = CollectingSink()
    config = HostConfig(state_dir=tmp_path / "state", batch_size=8)

    async def scenario() -> tuple[Supervisor, list[dict[str, list[str]]]]:
        sup = Supervisor(config, [Manifest.load(folder / "plugin.toml")], sink)
        await sup.start()
        for pid in range(1, 21):
            await sup.publish(exec_event("/usr/bin/id", pid=pid))
        crashing = rewrite(folder, version("v2", crash_on="/usr/bin/trigger"), "2.0")
        first = await sup.reload([crashing])
        for pid in range(21, 41):
            await sup.publish(exec_event("/usr/bin/id", pid=pid))
        await sup.publish(exec_event("/usr/bin/trigger", pid=41))
        for pid in range(42, 61):
            await sup.publish(exec_event("/usr/bin/id", pid=pid))
        await until(lambda: not sup.rollout.trials)
        again = await sup.reload([crashing])  # the same content: not tried again
        await sup.drain()
        await sup.stop()
        return sup, [first, again]

    with structlog.testing.capture_logs() as logs:
        sup, (first, again) = asyncio.run(scenario())
    assert first["shadow"] == ["rolling"]
    assert again["refused"] == ["rolling"] and again["kept"] == ["rolling"]
    assert {f.message for f in sink.findings} == {"v1"}  # nothing of the shadow emitted
    assert exec_findings(sink) == Counter(range(1, 61))  # every event once, by v1
    current = sup.plugins["rolling"]
    assert current.manifest.version == "1.0" and current.stats.restarts == {}
    (candidate,) = [r for r in sup.retired if r.manifest.version == "2.0"]
    assert candidate.retired.startswith("rolled back: fault in shadow")
    assert candidate.phase is Phase.STOPPED
    (rolled,) = [e for e in logs if e["event"].startswith("new plugin version rolled back")]
    assert "exit code 3" in rolled["reason"]
    assert any(e["event"].startswith("plugin version still rejected") for e in logs)
    assert history(tmp_path / "state", "rolling") == [
        ("1.0", "running"),
        ("2.0", "validated"),
        ("2.0", "shadow"),
        ("2.0", "rolled back"),
    ]


def test_promoted_at_a_cut_then_replaced_by_its_last_known_good(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path / "plugins", "rolling", version("v1"))
    sink = CollectingSink()
    config = HostConfig(
        state_dir=tmp_path / "state",
        batch_size=16,
        shadow_events=300,
        # The promoted version's failure: two dead letters within an hour spend its budget.
        poison_per_hour=1,
    )
    published = 0

    async def stream(sup: Supervisor, count: int, exe: str = "/usr/bin/id") -> None:
        nonlocal published
        for _ in range(count):
            published += 1
            await sup.publish(exec_event(exe, pid=published))
            if published % 50 == 0:
                await asyncio.sleep(0.01)  # a steady stream, not one burst

    async def scenario() -> Supervisor:
        sup = Supervisor(config, [Manifest.load(folder / "plugin.toml")], sink)
        await sup.start()
        await stream(sup, 200)
        # v2 finds what v1 finds, and one more thing; it cannot take /usr/bin/later.
        v2 = rewrite(folder, version("v2", crash_on="/usr/bin/later", extra=True), "2.0")
        assert (await sup.reload([v2]))["shadow"] == ["rolling"]
        deadline = time.monotonic() + 60
        while sup.plugins["rolling"].manifest.version != "2.0":
            assert time.monotonic() < deadline, "never promoted"
            await stream(sup, 50)
        await stream(sup, 200)
        await until(lambda: "rolling" in sup.rollout.reports)
        await stream(sup, 40, exe="/usr/bin/later")
        await until(lambda: sup.plugins["rolling"].manifest.version == "1.0")
        await stream(sup, 100)
        await sup.drain()
        await sup.stop()
        return sup

    with structlog.testing.capture_logs() as logs:
        sup = asyncio.run(scenario())
    by_version: dict[str, set[int]] = {"v1": set(), "v2": set()}
    for f in sink.findings:
        if f.rule == "exec":
            by_version[f.message].add(f.event_ids[0])
    counts = exec_findings(sink)
    v2_runner = next(r for r in sup.runners if r.manifest.version == "2.0")
    # Across the promotion, each event's findings came from exactly one version: v1's up to
    # the cut, v2's after it, and v2's shadow findings (before the cut) were never emitted.
    cut = min(by_version["v2"])
    assert cut > 200 and max(by_version["v2"]) <= published - 140
    assert all(counts[seq] == 1 for seq in range(1, published + 1) if seq in by_version["v2"])
    assert all(seq not in by_version["v2"] for seq in range(1, cut))
    # The dead letters of the failed version excepted, every event had its finding once.
    missing = [seq for seq in range(1, published + 1) if counts[seq] != 1]
    assert len(missing) <= v2_runner.stats.dead_lettered
    assert all(counts[seq] <= 1 for seq in missing)
    # The shadow report: v2 adds one finding per tenth event of its shadow run, misses none.
    report = sup.rollout.reports["rolling"]
    assert report.events >= 300 and report.missing_total == 0
    assert report.added_total == report.events // 10 > 0
    assert report.current == report.candidate - report.added_total
    # Its failure after promotion brought v1 back, which took over what v2 still owed.
    current = sup.plugins["rolling"]
    assert current.manifest.version == "1.0" and current.phase is Phase.STOPPED
    assert v2_runner.retired == "replaced by its last known good version 1.0"
    assert any(e["event"].endswith("back to its last known good") for e in logs)
    assert [what for _, what in history(tmp_path / "state", "rolling")] == [
        "running",
        "validated",
        "shadow",
        "promoted",
        "shadow report",
        "replaced",
        "last known good",
    ]
