"""The SDK catches a plugin author's mistakes where they are made, and says which and how."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent_host import sdk
from agent_host.protocol import FileEvent, NetworkEvent, ProcessEvent
from agent_host.sdk import Finding, Plugin, Severity
from agent_host.testing import exec_event, run_plugin
from tests.helpers import make_plugin


class TestFinding:
    """A Finding checks its fields when it is made, naming the field and what it expected."""

    def test_a_severity_may_be_named(self) -> None:
        assert Finding("r", "high", "m").severity is Severity.HIGH
        assert Finding("r", " Critical ", "m").severity is Severity.CRITICAL
        assert Finding("r", 2, "m").severity is Severity.LOW  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"severity": "urgent"}, ValueError, "Finding.severity: unknown severity 'urgent'"),
            ({"severity": 9}, ValueError, r"Finding.severity: 9 is not a severity \(1 to 5\)"),
            ({"severity": 4.0}, TypeError, "Finding.severity: expected a Severity or one of"),
            ({"rule": ""}, TypeError, "Finding.rule: expected a non-empty string"),
            ({"message": None}, TypeError, "Finding.message: expected a string, got NoneType"),
            (
                {"techniques": "T1059"},
                TypeError,
                r"Finding.techniques: expected a tuple of strings like \('T1059.004',\), "
                "got str 'T1059'",
            ),
            (
                {"techniques": ("execution",)},
                ValueError,
                "Finding.techniques: 'execution' is not an ATT&CK technique id",
            ),
            ({"event_ids": "12"}, TypeError, "Finding.event_ids: expected a tuple of event seq"),
            ({"event_ids": (1, -2)}, TypeError, "Finding.event_ids: expected positive integers"),
            ({"attributes": {"n": 1}}, TypeError, "Finding.attributes: expected a mapping"),
        ],
    )
    def test_each_mistake_names_the_field(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        fields: dict[str, object] = {"rule": "r", "severity": "low", "message": "m", **kwargs}
        with pytest.raises(error, match=message):
            Finding(**fields)  # type: ignore[arg-type]

    def test_lists_become_tuples(self) -> None:
        finding = Finding("r", "low", "m", event_ids=[3, 4], techniques=["T1059.004"])  # type: ignore[arg-type]
        assert finding.event_ids == (3, 4)
        assert finding.techniques == ("T1059.004",)
        assert Finding("r", "low", "m", event_ids=7).event_ids == (7,)  # type: ignore[arg-type]


class TestPluginClass:
    """An ``on_*`` method that is not a hook fails at the class statement."""

    def test_a_misspelled_hook_is_named_with_the_likely_one(self) -> None:
        with pytest.raises(TypeError) as caught:

            class Detector(Plugin):
                def on_evnt(self, event: sdk.Event) -> None:
                    pass

        assert str(caught.value) == (
            "TestPluginClass.test_a_misspelled_hook_is_named_with_the_likely_one.<locals>."
            "Detector.on_evnt is not a hook of agent_host.sdk.Plugin "
            "(hooks: on_event, on_start, on_stop); did you mean on_event?"
        )

    def test_other_methods_are_the_authors_own(self) -> None:
        class Detector(Plugin):
            def once(self) -> None:
                pass

        assert Detector().once() is None


class TestExports:
    """The event enums are exported, with exactly the protocol's values."""

    @pytest.mark.parametrize(
        ("exported", "proto"),
        [
            (sdk.ProcessAction, ProcessEvent.Action),
            (sdk.FileAction, FileEvent.Action),
            (sdk.NetworkAction, NetworkEvent.Action),
        ],
    )
    def test_enums_match_the_protos(self, exported: type, proto: object) -> None:
        values = {
            v.name: v.number
            for v in proto.DESCRIPTOR.values  # type: ignore[attr-defined]
            if v.number != 0
        }
        assert {m.name: int(m) for m in exported} == values  # type: ignore[attr-defined]

    def test_the_public_names(self) -> None:
        assert sorted(sdk.__all__) == [
            "ContentError",
            "Event",
            "FileAction",
            "FileEvent",
            "Finding",
            "NetworkAction",
            "NetworkEvent",
            "Plugin",
            "ProcessAction",
            "ProcessEvent",
            "Severity",
            "open_file",
        ]


class TestInAWorker:
    """The same mistakes, made by plugin code running in a real worker."""

    def test_a_single_finding_returned_is_one_finding(self, tmp_path: Path) -> None:
        plugin = make_plugin(
            tmp_path,
            "single",
            """\
            from agent_host.sdk import Finding, Plugin, ProcessAction

            class Detector(Plugin):
                def on_event(self, event):
                    if event.process.action == ProcessAction.START:
                        return Finding(rule="one", severity="high", message=event.process.exe)
            """,
        )
        run = run_plugin(plugin, [exec_event("/usr/bin/a"), exec_event("/usr/bin/b")])
        assert run.rules() == ["one", "one"]
        assert [f.severity for f in run.findings] == [Severity.HIGH, Severity.HIGH]
        assert run.stats.errors == 0

    def test_a_bad_field_is_an_error_of_that_event_only(self, tmp_path: Path) -> None:
        plugin = make_plugin(
            tmp_path,
            "bad_field",
            """\
            from agent_host.sdk import Finding, Plugin

            class Detector(Plugin):
                def on_event(self, event):
                    if event.process.exe == "/usr/bin/bad":
                        yield Finding(rule="ok", severity="low", message="first")
                        yield Finding(rule="t", severity="low", message="m", techniques="T1059")
                    else:
                        yield Finding(rule="ok", severity="low", message="fine")
            """,
        )
        run = run_plugin(plugin, [exec_event("/usr/bin/good"), exec_event("/usr/bin/bad")])
        assert [f.message for f in run.findings] == ["fine"]  # all of an event's, or none
        assert (run.stats.processed, run.stats.errors) == (2, 1)
        assert run.state == "stopped"

    def test_a_misspelled_hook_fails_the_start_naming_it(self, tmp_path: Path) -> None:
        plugin = make_plugin(
            tmp_path,
            "typo",
            """\
            from agent_host.sdk import Plugin

            class Detector(Plugin):
                def on_evnt(self, event):
                    return None
            """,
        )
        run = run_plugin(plugin, [exec_event("/usr/bin/a")])
        assert run.state == "failed"
        assert "Detector.on_evnt is not a hook of agent_host.sdk.Plugin" in run.reason
        assert "did you mean on_event? (at detector.py:3)" in run.reason
        assert run.stats.undelivered == 1

    def test_returning_something_else_is_an_error(self, tmp_path: Path) -> None:
        plugin = make_plugin(
            tmp_path,
            "wrong_return",
            """\
            from agent_host.sdk import Plugin

            class Detector(Plugin):
                def on_event(self, event):
                    return "suspicious"
            """,
        )
        run = run_plugin(plugin, [exec_event("/usr/bin/a")])
        assert (run.stats.processed, run.stats.errors, run.findings) == (1, 1, [])


class TestContentError:
    """A rule the plugin cannot use: skipped with a warning in service, fatal in validation."""

    def test_in_service_it_is_logged_and_the_plugin_goes_on(self, caplog: Any) -> None:
        plugin = sdk.Plugin()
        plugin.log = logging.getLogger("plugin.test")
        with caplog.at_level(logging.WARNING, logger="plugin.test"):
            plugin.content_error("rule x.yml not loaded")
        assert [r.getMessage() for r in caplog.records] == ["rule x.yml not loaded"]

    def test_in_validation_it_fails_the_start(self) -> None:
        plugin = sdk.Plugin()
        plugin.validating = True
        with pytest.raises(sdk.ContentError, match=r"rule x\.yml not loaded"):
            plugin.content_error("rule x.yml not loaded")
