"""The config file: every mistake named with its file, line and key; its settings under the
flags; read again on SIGHUP, its live settings applied and the others named."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent_host.host.store import StateStore
from agent_host.host.updates.signing import load_private, new_key_pair, sign
from tests.cli.test_errors import REPO, cli
from tests.e2e.test_signals import copy_plugin
from tests.helpers import exec_event, use_plugin

BAD = """\
sandbox = "loose"
# a comment, so that lines are counted, not keys
shadow_events = 0
nope = 1

shadow = "no"
webhok = "http://x/"
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
        "bad.toml:7: webhok: not a setting of agent-host run; did you mean 'webhook'?",
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


def test_sighup_applies_the_live_settings_and_names_the_others(tmp_path: Path) -> None:
    """Folders, findings file and signature policy apply at once, and a running plugin the new
    policy refuses is stopped; a batching change waits for the next start, and says so."""
    copy_plugin("exec_from_tmp", tmp_path / "first", "early")
    copy_plugin("tally", tmp_path / "second", "late")
    copy_plugin("tally", tmp_path / "second", "unsigned")
    key, public = new_key_pair(tmp_path / "ops")
    for folder in (tmp_path / "first" / "early", tmp_path / "second" / "late"):
        sign(folder, load_private(key))
    config = tmp_path / "agent-host.toml"
    config.write_text(f'plugins = ["{tmp_path / "first"}"]\nfindings = "before.jsonl"\n')
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--config", str(config), "--source", "synthetic", "--duration", "60"),
            *("--quiet", "--no-watch-plugins", "--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert agent.stderr is not None
    logs: list[dict[str, object]] = []

    def until(event: str) -> dict[str, object]:
        while time.monotonic() < deadline:
            logs.append(json.loads(agent.stderr.readline()))
            if logs[-1]["event"] == event:
                return logs[-1]
        raise AssertionError(f"no {event!r} in time")

    try:
        deadline = time.monotonic() + 60
        until("plugin started")
        while not (tmp_path / "before.jsonl").stat().st_size and time.monotonic() < deadline:
            time.sleep(0.1)  # findings into the first file
        folders = f'["{tmp_path / "first"}", "{tmp_path / "second"}"]'
        config.write_text(f'plugins = {folders}\nfindings = "after.jsonl"\nbatch_size = 17\n')
        agent.send_signal(signal.SIGHUP)
        added = until("plugins reloaded")
        config.write_text(
            f'plugins = {folders}\nfindings = "after.jsonl"\nbatch_size = 17\n'
            f'signatures = "enforce"\ntrusted_key = ["{public}"]\n'
        )
        agent.send_signal(signal.SIGHUP)
        enforced = until("plugins reloaded")
        while not (tmp_path / "after.jsonl").stat().st_size and time.monotonic() < deadline:
            time.sleep(0.1)  # and into the one the config file names now
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    assert agent.returncode == 0
    assert added["added"] == ["late", "unsigned"] and added["kept"] == ["early"]
    later = [e for e in logs if e["event"].startswith("config file settings changed")]
    assert [e["settings"] for e in later] == ["batch_size", "batch_size"]  # still pending
    assert enforced["removed"] == ["unsigned"] and enforced["kept"] == ["early", "late"]
    assert (tmp_path / "before.jsonl").stat().st_size > 0
    assert (tmp_path / "after.jsonl").stat().st_size > 0


def test_flags_replace_the_files_list_rather_than_add_to_it(tmp_path: Path) -> None:
    copy_plugin("tally", tmp_path / "from_file", "filed")
    copy_plugin("tally", tmp_path / "from_flag", "flagged")
    (tmp_path / "agent-host.toml").write_text(f'plugins = ["{tmp_path / "from_file"}"]\n')
    ran = cli(
        [
            *("run", "--config", "agent-host.toml", "--source", "synthetic"),
            *("--plugins", str(tmp_path / "from_flag"), "--duration", "1", "--quiet"),
            *("--state-dir", "state", "--summary-json", "summary.json"),
        ],
        tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    rows = json.loads((tmp_path / "summary.json").read_text())["plugins"]
    assert [r["plugin"] for r in rows] == ["flagged"]


def test_admin_commands_find_the_daemon_by_its_config_file(tmp_path: Path) -> None:
    """``status``, ``deadletters``, ``plugins ...``: told nothing, they read the daemon's own
    config file (``--config``, else /etc/agent-host/agent-host.toml) for where its state,
    control socket and plugins are, as osqueryctl and falcoctl do."""
    daemon_state = tmp_path / "var-lib-agent-host"
    store = StateStore(daemon_state)
    store.add_dead_letter(
        "sigma", "1.0", 7, "exit code 3", exec_event("/tmp/x").SerializeToString()
    )
    store.close()
    config = tmp_path / "agent-host.toml"
    config.write_text(f'state-dir = "{daemon_state}"\nplugins = ["{tmp_path / "plugins"}"]\n')
    use_plugin(tmp_path / "plugins", "tally")

    letters = cli(["deadletters", "--config", str(config), "--json"], tmp_path)
    assert letters.returncode == 0, letters.stderr
    assert [json.loads(line)["plugin"] for line in letters.stdout.splitlines()] == ["sigma"]
    status = cli(["status", "--config", str(config)], tmp_path)
    assert status.returncode == 2
    assert f"no running host: {daemon_state}/control.sock does not exist" in status.stderr
    listed = cli(["plugins", "list", "--config", str(config)], tmp_path)
    assert listed.returncode == 0 and "tally" in listed.stdout, listed.stderr
    history = cli(["plugins", "history", "tally", "--plugins", "plugins"], tmp_path)
    assert history.stderr == ""  # the flag is taken, as by `plugins list` (it was refused)
    assert history.stdout == "no history of tally in this state folder\n"


def test_the_commented_default_is_every_setting_and_checks_clean(tmp_path: Path) -> None:
    """`config default` (what the package installs): all commented out it says nothing;
    with every line that has a default uncommented it still passes `config check`."""
    made = cli(["config", "default"], tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "commented.toml").write_text(made.stdout)
    assert cli(["config", "check", "--config", "commented.toml"], tmp_path).stdout.endswith(
        "ok (0 settings)\n"
    )
    settings = [m[1] for m in re.finditer(r"(?m)^# ([a-z_]+ = .*)$", made.stdout)]
    placeholders = {"FILE", "DIR", "URL", "PATH", "SUBJECT", "COMMAND", "TARGET", "KEY"}
    real = [s for s in settings if not any(f'"{p}"' in s for p in placeholders)]
    (tmp_path / "uncommented.toml").write_text("\n".join(real) + "\n")
    checked = cli(["config", "check", "--config", "uncommented.toml"], tmp_path)
    assert checked.returncode == 0, checked.stdout
    for flag in ("webhook", "syslog", "program", "findings_max_mb", "shadow", "export"):
        assert any(s.startswith(f"{flag} = ") for s in settings), flag
