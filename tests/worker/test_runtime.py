"""The worker runtime: what a plugin's hooks return reaches the host as the SDK documents."""

from __future__ import annotations

from pathlib import Path

from agent_host.testing import exec_event, run_plugin
from tests.helpers import make_plugin

ON_STOP = """\
from agent_host.sdk import Finding, Plugin, Severity

class Detector(Plugin):
    def on_start(self, config):
        self.seen = 0

    def on_event(self, event):
        self.seen += 1

    def on_stop(self):
        return [Finding(rule="summary", severity=Severity.INFO, message=f"{self.seen} events")]
"""


class TestOnStop:
    """A finding from on_stop without event_ids is about no event, and is written."""

    def test_on_stop_finding_without_event_ids(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "stopper", ON_STOP)
        run = run_plugin(plugin, [exec_event("/usr/bin/a"), exec_event("/usr/bin/b")])
        assert [(f.rule, f.message, list(f.event_ids)) for f in run.findings] == [
            ("summary", "2 events", [])
        ]
        assert run.stats.rejected_findings == 0
