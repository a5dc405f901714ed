"""Validation before activation, with real hosts and real workers: a new version that fails
on a hostile event or on its own cases is rejected with the reason and the event, and the
running version keeps running and processing."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.supervisor import Supervisor
from agent_host.host.updates.validation import hostile_events
from agent_host.protocol import Event, ProcessEvent, message_to_json
from tests.helpers import BUNDLED_PLUGINS, exec_event, make_plugin

HONEST = """\
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_event(self, event):
        return Finding(rule="v1", severity="info", message="seen")
"""

#: Dies on an argument list longer than it was ever tested with.
CRASHES_ON_LONG_ARGV = """\
import os
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_event(self, event):
        if len(event.process.cmdline) > 1000:
            os._exit(3)
        return Finding(rule="v2", severity="info", message="seen")
"""

#: Channel File 291 in miniature: a rule template with one more field than the events supply.
TEMPLATED = """\
from pathlib import Path
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.fields = int((Path(__file__).parent / "template.txt").read_text())

    def on_event(self, event):
        args = event.process.cmdline
        if args[self.fields - 1] == "--payload":
            return Finding(rule="templated", severity="high", message="payload")
        return None
"""


def case(event: Event, expect: list[str]) -> str:
    return json.dumps({"event": json.loads(message_to_json(event)), "expect": expect})


def reload_to(
    tmp_path: Path, first: str, second: str, extra: dict[str, str] | None = None
) -> tuple[dict[str, list[str]], list[str], list[dict[str, Any]]]:
    """Run version 1, reload to version 2 (the same plugin folder rewritten), publish after;
    return the reload's report, the findings' rules after it, and the host's log."""
    folder = make_plugin(tmp_path / "plugins", "rolling", first)
    manifest = Manifest.load(folder / "plugin.toml")

    async def scenario() -> tuple[dict[str, list[str]], list[str]]:
        sink = CollectingSink()
        # Replaced at once, not shadowed first: this is about validation (test_rollout.py).
        sup = Supervisor(HostConfig(state_dir=None, shadow=False), [manifest], sink)
        await sup.start()
        (folder / "detector.py").write_text(second)
        for name, text in (extra or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        report = await sup.reload([Manifest.load(folder / "plugin.toml")])
        before = len(sink.findings)
        await sup.publish(exec_event("/usr/bin/after"))
        await sup.drain()
        await sup.stop()
        return report, [f.rule for f in sink.findings[before:]]

    with structlog.testing.capture_logs() as logs:
        report, rules = asyncio.run(scenario())
    return report, rules, logs


class TestHostileCorpus:
    def test_it_covers_every_kind_and_field(self) -> None:
        corpus = dict(hostile_events())
        for kind in ("process", "file", "network"):
            assert f"{kind}: every field empty" in corpus
        assert len(corpus["process.cmdline 10000 entries"].process.cmdline) == 10_000
        assert corpus["process.pid = 4294967295"].process.pid == 2**32 - 1
        assert corpus["process.exit_code = -2147483648"].process.exit_code == -(2**31)
        assert corpus["file.action = 6 (not a defined value)"].file.action == 6
        assert {e.WhichOneof("kind") for e in corpus.values()} == {"process", "file", "network"}


class TestValidation:
    def test_a_version_that_crashes_on_a_hostile_event_is_rejected(self, tmp_path: Path) -> None:
        report, rules, logs = reload_to(tmp_path, HONEST, CRASHES_ON_LONG_ARGV)
        assert report["refused"] == ["rolling"] and report["kept"] == ["rolling"]
        (rejected,) = [e for e in logs if e["event"].startswith("plugin version rejected")]
        assert rejected["breaking_event"] == "process.cmdline 10000 entries"
        assert "exit code 3" in rejected["reason"]
        assert rules == ["v1"]  # the running version, untouched

    def test_a_version_that_passes_replaces_the_old(self, tmp_path: Path) -> None:
        passing = HONEST.replace('rule="v1"', 'rule="v2"')
        report, rules, logs = reload_to(tmp_path, HONEST, passing)
        assert report["changed"] == ["rolling"]
        assert any(e["event"] == "plugin version validated" for e in logs)
        assert rules == ["v2"]

    def test_a_template_expecting_one_more_field_is_caught(self, tmp_path: Path) -> None:
        """The new rule content's template reads 21 fields of events that supply 20."""
        twenty = Event(
            process=ProcessEvent(
                action=ProcessEvent.START, exe="/bin/x", cmdline=["a"] * 19 + ["--payload"]
            )
        )
        extra = {
            "template.txt": "21",
            "validation/cases.jsonl": case(twenty, ["templated"]) + "\n",
        }
        report, rules, logs = reload_to(tmp_path, HONEST, TEMPLATED, extra)
        assert report["refused"] == ["rolling"]
        (rejected,) = [e for e in logs if e["event"].startswith("plugin version rejected")]
        assert rejected["reason"] == "expected ['templated'], got []"
        assert rejected["breaking_event"] == "validation/cases.jsonl:1"
        assert rules == ["v1"]


BROKEN_SIGMA_RULE = """\
title: Condition naming a selection that does not exist
id: 00000000-0000-4000-8000-000000000291
logsource: {product: linux, category: process_creation}
detection:
  selection:
    Image|endswith: /nc
  condition: selection and filter
level: high
"""


def test_a_sigma_rule_that_does_not_load_is_caught(tmp_path: Path) -> None:
    """In service the sigma plugin skips a rule it cannot load; in validation that rule fails
    the new content, and the running content stays."""
    folder = tmp_path / "plugins" / "sigma"
    shutil.copytree(BUNDLED_PLUGINS / "sigma", folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = Manifest.load(folder / "plugin.toml")

    async def scenario() -> dict[str, list[str]]:
        sup = Supervisor(HostConfig(state_dir=None), [manifest], CollectingSink())
        await sup.start()
        (folder / "rules" / "broken.yml").write_text(BROKEN_SIGMA_RULE)
        report = await sup.reload([Manifest.load(folder / "plugin.toml")])
        assert sup.plugins["sigma"].phase is Phase.RUNNING
        await sup.stop()
        return report

    with structlog.testing.capture_logs() as logs:
        report = asyncio.run(scenario())
    assert report["refused"] == ["sigma"] and report["kept"] == ["sigma"]
    (rejected,) = [e for e in logs if e["event"].startswith("plugin version rejected")]
    assert "ContentError: sigma rule not loaded" in rejected["reason"]
    assert "broken.yml" in rejected["reason"]
