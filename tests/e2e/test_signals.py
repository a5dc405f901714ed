"""Signals to a running agent. SIGHUP: the plugin set is reloaded (one added, one changed, one
removed) and the findings file reopened after a logrotate-style rename; nothing is lost. A
second SIGINT: the agent stops at once and still writes its summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TEST_PLUGINS, exec_event, make_plugin, recording

REPO = Path(__file__).resolve().parents[2]


def copy_plugin(source: str, root: Path, name: str, version: str = "1.0") -> None:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(TEST_PLUGINS / source, folder)
    toml = folder / "plugin.toml"
    text = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', toml.read_text())
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text))


@pytest.mark.slow  # 8 s: run after the test command by .ci/run
def test_sighup_reloads_plugins_and_reopens_findings(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    copy_plugin("exec_from_tmp", plugins, "catcher")
    copy_plugin("tally", plugins, "changed")
    copy_plugin("tally", plugins, "removed")
    findings, summary = tmp_path / "findings.jsonl", tmp_path / "summary.json"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "synthetic", "--rate", "500", "--duration", "6"),
            *("--plugins", str(plugins), "--findings", str(findings), "--quiet"),
            *("--summary-json", str(summary), "--state-dir", str(tmp_path / "state")),
            # The reload of SIGHUP alone, each change at once (test_watch.py: the other way).
            *("--no-shadow", "--no-watch-plugins"),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not (findings.exists() and findings.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    findings.rename(tmp_path / "findings.jsonl.1")  # as logrotate does
    copy_plugin("tally", plugins, "changed", version="1.1")
    shutil.rmtree(plugins / "removed")
    copy_plugin("tally", plugins, "added")
    agent.send_signal(signal.SIGHUP)
    _, stderr = agent.communicate(timeout=120)
    assert agent.returncode == 0, stderr[-3000:]
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (reloaded,) = [e for e in logs if e["event"] == "plugins reloaded"]
    assert (reloaded["added"], reloaded["changed"], reloaded["removed"], reloaded["kept"]) == (
        ["added"],
        ["changed"],
        ["removed"],
        ["catcher"],
    )
    rows = {(r["plugin"], r["version"]): r for r in json.loads(summary.read_text())["plugins"]}
    steady = rows[("catcher", "1.0")]["processed"]
    assert rows[("catcher", "1.0")]["restarts"] == {}
    old, new = rows[("changed", "1.0")], rows[("changed", "1.1")]
    assert old["processed"] + new["processed"] == steady  # exactly one version each
    assert rows[("removed", "1.0")]["processed"] == old["processed"]
    assert rows[("added", "1.0")]["processed"] == new["processed"]
    assert rows[("removed", "1.0")]["reason"] == "removed by a reload"
    assert all(r["undelivered"] == 0 and r["state"] == "stopped" for r in rows.values())
    # Findings before the rename are in the old file, those after in a new one.
    assert (tmp_path / "findings.jsonl.1").read_text().strip()
    after = [json.loads(line) for line in findings.read_text().splitlines()]
    assert {f["plugin"] for f in after if f["rule"] == "tally"} == {"changed", "removed", "added"}


SLOW = """\
import time
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        time.sleep(1)
"""


def test_a_second_signal_stops_at_once_and_still_writes_the_summary(tmp_path: Path) -> None:
    make_plugin(tmp_path / "plugins", "slow", SLOW, extra_toml="[limits]\nbatch_deadline_s = 60\n")
    recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/id", pid=i) for i in range(1, 61)])
    summary = tmp_path / "summary.json"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "replay", "rec.jsonl"),
            *("--plugins", "plugins", "--quiet", "--batch-size", "1"),
            *("--summary-json", str(summary), "--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(3)  # started, and a minute of work ahead of it
    agent.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    agent.send_signal(signal.SIGINT)
    _, stderr = agent.communicate(timeout=60)
    assert time.monotonic() - started < 30  # at once, not after the minute of work
    assert agent.returncode == 130
    assert "second signal: stopping without draining" in stderr
    report = json.loads(summary.read_text())
    row = report["plugins"][0]
    assert row["plugin"] == "slow"
    assert 0 < row["delivered"] < 60
    # What it did not get to is not forgotten: every event accepted is processed or counted.
    assert row["undelivered"] > 0
    assert row["processed"] + row["undelivered"] == report["events"]


@pytest.mark.slow  # 9 s: run after the test command by .ci/run
def test_sigterm_stops_within_its_bound_when_a_plugin_is_far_behind(tmp_path: Path) -> None:
    """A plugin at one event a second, with a recording that fills the whole backlog (256
    batches): a drain would take minutes and the source waits for room. SIGTERM stops the host
    within 1 s (the source) + --drain-timeout + stop_timeout_s (5 s) + the last batches in
    flight; what was not delivered is counted."""
    make_plugin(tmp_path / "plugins", "slow", SLOW, extra_toml="[limits]\nbatch_deadline_s = 60\n")
    make_plugin(
        tmp_path / "plugins",
        "quick",
        "from agent_host.sdk import Plugin\nclass Detector(Plugin): pass\n",
    )
    events = 400
    recording(
        tmp_path / "rec.jsonl", [exec_event("/usr/bin/id", pid=i) for i in range(1, events + 1)]
    )
    summary = tmp_path / "summary.json"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "replay", "rec.jsonl"),
            *("--plugins", "plugins", "--quiet", "--batch-size", "1", "--drain-timeout", "1"),
            *("--summary-json", str(summary), "--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    time.sleep(4)  # started; the backlog full, minutes of work ahead
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=120)
    assert time.monotonic() - started < 90  # about 9 s; without a bound, 400 s
    assert agent.returncode == 0, stderr[-3000:]
    assert "not every accepted event could be delivered in time" in stderr
    report = json.loads(summary.read_text())
    rows = {r["plugin"]: r for r in report["plugins"]}
    assert 256 <= report["events"] < events  # the source stopped while waiting for room
    assert rows["quick"]["processed"] == report["events"]
    slow = rows["slow"]
    assert slow["undelivered"] > 200
    assert slow["processed"] + slow["undelivered"] == report["events"]
    assert slow["state"] == "stopped"


EARLY = """\
import os, signal, sys
from agent_host import early
early.catch()
os.kill(os.getpid(), signal.SIGTERM)  # while the rest is still to be imported
from agent_host.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigterm_before_the_host_runs_is_a_graceful_stop(tmp_path: Path) -> None:
    """A signal in the first instants (a service manager stopping what it just started) is
    noted from the command's first instruction on: the host starts, stops at once, and writes
    its summary; not the default action's silent end."""
    make_plugin(
        tmp_path / "plugins",
        "quick",
        "from agent_host.sdk import Plugin\nclass Detector(Plugin): pass\n",
    )
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [
            *(sys.executable, "-c", EARLY, "--log-format", "json", "run"),
            *("--source", "synthetic", "--duration", "60", "--plugins", "plugins", "--quiet"),
            *("--summary-json", str(summary), "--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,  # without the note, 60 s of synthetic events, or the default action
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(summary.read_text())
    assert report["plugins"][0]["state"] == "stopped"
    assert report["elapsed_s"] < 30


def test_other_commands_end_on_an_early_signal_as_the_signal_would(tmp_path: Path) -> None:
    code = EARLY.replace("SIGTERM", "SIGINT")
    run = subprocess.run(
        [sys.executable, "-c", code, "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 128 + signal.SIGINT, run.stderr
    assert run.stdout == ""  # ended before it asked any host anything
