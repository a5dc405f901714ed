"""The worker runtime: what a plugin's hooks return reaches the host as the SDK documents."""

from __future__ import annotations

from pathlib import Path

from agent_host.protocol import Event
from agent_host.testing import exec_event, run_plugin
from agent_host.worker.runtime import describe_exception
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


class TestAuthorsMistakes:
    """What a plugin author gets wrong is named with what was meant."""

    def test_a_misspelt_event_field_names_the_field_meant(self, tmp_path: Path) -> None:
        try:
            Event().process.cmdlin  # noqa: B018 - the author's typo
        except AttributeError as exc:
            said = describe_exception(exc, tmp_path)
        assert said == (
            "AttributeError: cmdlin (ProcessEvent has no field 'cmdlin'; did you mean 'cmdline'?)"
        )

    def test_a_missing_class_is_named_not_called_a_wrong_one(self, tmp_path: Path) -> None:
        plugin = make_plugin(tmp_path, "typo", ON_STOP, entrypoint="detector:Detectr")
        run = run_plugin(plugin, [exec_event("/usr/bin/a")])
        assert run.state == "failed"
        assert run.reason == (
            "failed to load: AttributeError: module 'detector' has no class 'Detectr'; "
            "did you mean 'Detector'?"
        )
