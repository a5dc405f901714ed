"""Reloading the plugin set under a steady stream of events: a plugin added, one changed, one
removed; the others keep running, and every event is processed by exactly one version."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Finding
from tests.helpers import TEST_PLUGINS, exec_event

N = 3000


def tally_copy(root: Path, name: str, version: str = "1.0") -> Manifest:
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(TEST_PLUGINS / "tally", folder)
    toml = folder / "plugin.toml"
    text = toml.read_text().replace('name = "tally"', f'name = "{name}"')
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text))
    return Manifest.load(toml)


def tallies(findings: list[Finding]) -> dict[tuple[str, str], dict[str, int]]:
    """What each (plugin, version) reported seeing at its on_stop."""
    return {
        (f.plugin, f.plugin_version): {k: int(v) for k, v in f.attributes.items() if k != "kinds"}
        for f in findings
        if f.rule == "tally"
    }


def test_reload_under_a_steady_stream(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    steady, changed, removed = (tally_copy(root, n) for n in ("steady", "changed", "removed"))
    sink = CollectingSink()

    async def scenario() -> tuple[Supervisor, dict[str, list[str]]]:
        sup = Supervisor(
            HostConfig(state_dir=None, batch_size=64, shadow=False),
            [steady, changed, removed],
            sink,
        )
        await sup.start()
        report: dict[str, list[str]] = {}
        for i in range(1, N + 1):
            await sup.publish(exec_event("/usr/bin/id", pid=i))
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # a steady stream, not one burst
            if i == N // 2:
                new_changed = tally_copy(root, "changed", version="1.1")
                added = tally_copy(root, "added")
                report = await sup.reload([steady, new_changed, added])
        await sup.stop()
        return sup, report

    with structlog.testing.capture_logs():
        sup, report = asyncio.run(scenario())
    assert report == {
        "added": ["added"],
        "changed": ["changed"],
        "shadow": [],
        "removed": ["removed"],
        "kept": ["steady"],
        "refused": [],
    }
    seen = tallies(sink.findings)
    everything = {"events": N, "distinct": N, "duplicates": 0, "seq_sum": N * (N + 1) // 2}
    assert seen[("steady", "1.0")] == everything  # never restarted, lost nothing
    old, new = seen[("changed", "1.0")], seen[("changed", "1.1")]
    assert old["events"] + new["events"] == N  # each event by exactly one version
    assert old["seq_sum"] + new["seq_sum"] == everything["seq_sum"]
    assert old["duplicates"] == new["duplicates"] == 0
    # The cut is the same for every group: what the removed one did not see, the added one did.
    assert seen[("removed", "1.0")]["events"] == old["events"]
    assert seen[("added", "1.0")]["events"] == new["events"]
    assert 0 < old["events"] < N
    assert sup.plugins["steady"].stats.restarts == {}
    for runner in sup.runners:
        assert runner.phase is Phase.STOPPED
        owed = runner.stats.processed + runner.stats.undelivered + runner.stats.dead_lettered
        assert owed == seen[(runner.name, runner.manifest.version)]["events"]
    assert sorted(r.retired for r in sup.retired) == [
        "removed by a reload",
        "replaced by version 1.1 in a reload",
    ]


def test_a_changed_file_is_a_change(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    manifest = tally_copy(root, "same")

    async def scenario() -> list[dict[str, list[str]]]:
        sup = Supervisor(HostConfig(state_dir=None), [manifest], CollectingSink())
        await sup.start()
        first = await sup.reload([manifest])  # nothing changed
        (root / "same" / "tally.py").write_text(
            (root / "same" / "tally.py").read_text() + "\n# a new comment\n"
        )
        second = await sup.reload([manifest])
        await sup.stop()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert first["kept"] == ["same"]
    assert second["shadow"] == ["same"]  # a new version, shadowed first
