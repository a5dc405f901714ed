"""Bad input gets one clear line naming the file (and line) or plugin; the rest runs."""

from __future__ import annotations

from pathlib import Path

from agent_host.protocol import message_to_json
from tests.helpers import agent_host, exec_event, make_plugin, use_plugin

IMPORT_FAILS = """\
from agent_host.sdk import Plugin

raise RuntimeError("cannot reach the rule server")

class Detector(Plugin):
    pass
"""
START_FAILS = """\
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_start(self, config):
        raise ValueError(f"threshold missing from {sorted(config)}")
"""
NOT_A_PLUGIN = "class Detector:\n    pass\n"
SYNTAX_ERROR = "from agent_host.sdk import Plugin\nclass Detector(Plugin)\n    pass\n"
EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"


def write_recording_with_bad_lines(path: Path) -> int:
    """A recording with 10 good events and 3 bad lines (lines 3, 6, 9); returns the good count."""
    lines = []
    for i in range(10):
        lines.append(message_to_json(exec_event(f"/usr/bin/p{i}")))
        if i == 1:
            lines.append('{"process": {"pid": "not a number"}}')
        if i == 3:
            lines.append("this is not json")
        if i == 5:
            lines.append('{"host": "h1"}')
    path.write_text("\n".join(lines) + "\n")
    return 10


class TestBadInput:
    """Each bad plugin or line is skipped and counted with one clear line; the rest runs."""

    def test_every_kind_of_bad_plugin_and_line(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        use_plugin(plugins, "tally")
        bad_toml = make_plugin(plugins, "bad_toml", NOT_A_PLUGIN)
        (bad_toml / "plugin.toml").write_text('[plugin]\nname = "bad_toml\n')
        make_plugin(plugins, "no_entrypoint", NOT_A_PLUGIN, entrypoint="missing:Detector")
        make_plugin(plugins, "import_fails", IMPORT_FAILS)
        make_plugin(plugins, "start_fails", START_FAILS, extra_toml="[config]\nlevel = 1\n")
        make_plugin(plugins, "not_a_plugin", NOT_A_PLUGIN)
        make_plugin(plugins, "syntax_error", SYNTAX_ERROR)
        make_plugin(plugins, "exits_at_import", EXITS_AT_IMPORT)
        # What once took the whole host down at start, with a traceback.
        for name, bad in (
            ("not_utf8", b'description = "\xff\xfe"\n'),
            ("nested", b"x = " + b"[" * 100_000 + b"\n"),
            ("infinite", b"[limits]\nmemory_mb = inf\n"),
        ):
            folder = make_plugin(plugins, name, NOT_A_PLUGIN)
            toml = folder / "plugin.toml"
            toml.write_bytes(toml.read_bytes() + bad)
        long_name = make_plugin(plugins, "long_name", NOT_A_PLUGIN)
        text = (long_name / "plugin.toml").read_text()
        (long_name / "plugin.toml").write_text(text.replace("detector:", "d" * 5000 + ":"))
        good = write_recording_with_bad_lines(tmp_path / "rec.jsonl")

        run = agent_host(["replay", "rec.jsonl", "--plugins", str(plugins)], cwd=tmp_path)

        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        manifest_errors = [e["error"] for e in run.logs_with("plugin skipped: bad manifest")]
        assert len(manifest_errors) == 6
        by_file = {e.split(":")[0]: e for e in manifest_errors}
        assert "not valid TOML" in by_file[f"{plugins}/bad_toml/plugin.toml"]
        assert by_file[f"{plugins}/no_entrypoint/plugin.toml"] == (
            f"{plugins}/no_entrypoint/plugin.toml:4: plugin.entrypoint: module 'missing' not "
            f"found in {plugins}/no_entrypoint"
        )
        assert "not UTF-8 text" in by_file[f"{plugins}/not_utf8/plugin.toml"]
        assert "nested too deeply" in by_file[f"{plugins}/nested/plugin.toml"]
        assert (
            "limits.memory_mb: must be a positive number, at most 1048576, got inf"
            in by_file[f"{plugins}/infinite/plugin.toml"]
        )
        assert "not found in" in by_file[f"{plugins}/long_name/plugin.toml"]
        load_errors = {e["plugin"]: e["reason"] for e in run.logs_with("plugin failed to load")}
        assert load_errors == {
            "import_fails": "RuntimeError: cannot reach the rule server (at detector.py:3)",
            "start_fails": "ValueError: threshold missing from ['level'] (at detector.py:5)",
            "not_a_plugin": "TypeError: detector:Detector is not a subclass of "
            "agent_host.sdk.Plugin",
            "syntax_error": "SyntaxError: expected ':' (detector.py, line 2) (at detector.py:2)",
            "exits_at_import": "SystemExit: 3 (at detector.py:2)",
        }
        bad_lines = [e["error"] for e in run.logs_with("bad event line skipped")]
        assert [line.split(": ")[0] for line in bad_lines] == [
            "rec.jsonl:3",
            "rec.jsonl:6",
            "rec.jsonl:9",
        ]
        assert "event has none of process, file, network" in bad_lines[2]
        assert run.summary is not None
        assert (run.summary["events"], run.summary["bad_lines"]) == (good, 3)
        assert run.plugin("tally")["processed"] == good
        for name, reason in load_errors.items():
            row = run.plugin(name)
            assert (row["state"], row["processed"], row["restarts"]) == ("failed", 0, {})
            assert row["reason"] == f"failed to load: {reason}"
        tally = next(f for f in run.findings if f.plugin == "tally")
        assert tally.attributes["events"] == str(good)

    def test_nothing_could_run_is_a_failure(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        make_plugin(plugins, "import_fails", IMPORT_FAILS)
        (tmp_path / "rec.jsonl").write_text(message_to_json(exec_event("/bin/true")) + "\n")

        run = agent_host(["replay", "rec.jsonl", "--plugins", str(plugins)], cwd=tmp_path)

        assert run.returncode == 1
        # asyncio may add a warning of its own ("Unknown child process pid ...") now and then
        # while the zygote is being stopped: JSON like the rest (tests/test_logs.py).
        assert [e["event"] for e in run.logs if e.get("level") == "error"][
            -1
        ] == "no plugin could start"
        assert "Traceback" not in run.stderr

    def test_no_usable_manifest_is_a_failure(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        (plugins / "x").mkdir(parents=True)
        (plugins / "x" / "plugin.toml").write_text("nonsense")
        (tmp_path / "rec.jsonl").write_text("")

        run = agent_host(["replay", "rec.jsonl", "--plugins", str(plugins)], cwd=tmp_path)

        assert run.returncode == 1
        assert run.logs_with("no usable plugin")
        assert "Traceback" not in run.stderr

    def test_missing_recording_is_one_line(self, tmp_path: Path) -> None:
        use_plugin(tmp_path / "plugins", "tally")

        run = agent_host(["replay", "nope.jsonl", "--plugins", "plugins"], cwd=tmp_path)

        assert run.returncode == 2
        assert run.stderr == "agent-host: nope.jsonl: recording not found\n"


def test_plugins_list_names_a_plugin_whose_module_does_not_import(tmp_path: Path) -> None:
    """The manifest is fine, the module is not: `plugins list` starts each plugin in a
    sandboxed worker, as a run would, and says so instead of `ok`."""
    plugins = tmp_path / "plugins"
    use_plugin(plugins, "tally")
    make_plugin(plugins, "import_fails", IMPORT_FAILS)
    listing = agent_host(["plugins", "list", "--plugins", str(plugins)], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line[:1].isalpha()}
    assert rows["tally"].endswith(" ok")
    assert rows["import_fails"].endswith(
        "fails to start: failed to load: RuntimeError: cannot reach the rule server "
        "(at detector.py:3)"
    )
    assert "1 failing to start" in listing.stdout
