"""The config file: every mistake named with its file, line and key; its settings under the
flags; its plugin folders read again on SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.test_errors import REPO, cli
from tests.e2e.test_signals import copy_plugin

BAD = """\
sandbox = "loose"
# a comment, so that lines are counted, not keys
shadow_events = 0
nope = 1

shadow = "no"
"""


def test_check_names_each_mistake(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(BAD)
    checked = cli(["config", "check", "--config", "bad.toml"], tmp_path)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        "bad.toml:1: sandbox: one of strict, warn, got 'loose'",
        "bad.toml:3: shadow_events: must be positive, got 0",
        "bad.toml:4: nope: not a setting of agent-host run",
        "bad.toml:6: shadow: must be true or false, got 'no'",
    ]
    (tmp_path / "broken.toml").write_text("plugins = [\n")
    broken = cli(["config", "check", "--config", "broken.toml"], tmp_path)
    assert broken.returncode == 1 and broken.stdout.startswith("broken.toml: not TOML: ")
    # The daemon refuses to start on it, with the same lines, no traceback.
    run = cli(["run", "--config", "bad.toml", "--source", "synthetic"], tmp_path)
    assert run.returncode == 2
    assert (
        run.stderr.splitlines()[0]
        == "agent-host: bad.toml:1: sandbox: one of strict, warn, got 'loose'"
    )
    assert "Traceback" not in run.stderr


def test_settings_under_flags(tmp_path: Path) -> None:
    copy_plugin("tally", tmp_path / "mine", "counted")
    (tmp_path / "agent-host.toml").write_text(
        f'plugins = ["{tmp_path / "mine"}"]\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        'findings = "from-config.jsonl"\n'
        "quiet = true\n"
        'summary_json = "summary.json"\n'
    )
    assert cli(["config", "check", "--config", "agent-host.toml"], tmp_path).returncode == 0
    run = cli(
        [
            *("run", "--config", "agent-host.toml", "--source", "synthetic"),
            *("--duration", "1", "--findings", "from-flag.jsonl"),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "from-flag.jsonl").read_text()  # the flag won
    assert not (tmp_path / "from-config.jsonl").exists()
    rows = json.loads((tmp_path / "summary.json").read_text())["plugins"]
    assert [r["plugin"] for r in rows] == ["counted"]  # the config's folder, not the bundled
    assert (tmp_path / "state").is_dir()


def test_sighup_reads_the_plugin_folders_again(tmp_path: Path) -> None:
    copy_plugin("tally", tmp_path / "first", "early")
    copy_plugin("tally", tmp_path / "second", "late")
    config = tmp_path / "agent-host.toml"
    config.write_text(f'plugins = ["{tmp_path / "first"}"]\n')
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--config", str(config), "--source", "synthetic", "--duration", "60"),
            *("--quiet", "--no-watch-plugins", "--state-dir", str(tmp_path / "state")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert agent.stderr is not None
    logs = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs.append(json.loads(agent.stderr.readline()))
            if logs[-1]["event"] == "plugin started":
                break
        config.write_text(f'plugins = ["{tmp_path / "first"}", "{tmp_path / "second"}"]\n')
        agent.send_signal(signal.SIGHUP)
        while time.monotonic() < deadline:
            logs.append(json.loads(agent.stderr.readline()))
            if logs[-1]["event"] == "plugins reloaded":
                break
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    assert agent.returncode == 0
    assert any(e["event"] == "plugin folders from the config file" for e in logs)
    (reloaded,) = [e for e in logs if e["event"] == "plugins reloaded"]
    assert reloaded["added"] == ["late"] and reloaded["kept"] == ["early"]
