"""Hot reload of a running agent through its plugins folder: a plugin rewritten in place is
validated, runs in shadow and is promoted, without a signal; ``plugins history`` tells it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from tests.e2e.test_signals import REPO, copy_plugin


def read_until(stream: IO[str], logs: list[dict[str, Any]], wanted: str, timeout: float) -> None:
    """Read the agent's JSON log lines into ``logs`` until one is ``wanted``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if line.startswith("{"):
            logs.append(json.loads(line))
            if logs[-1]["event"] == wanted:
                return
    raise AssertionError(f"no {wanted!r} in the log: {[e['event'] for e in logs][-20:]}")


def test_a_plugin_changed_in_its_folder_is_shadowed_then_promoted(tmp_path: Path) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    copy_plugin("tally", plugins, "watched")
    summary = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "synthetic", "--rate", "500", "--duration", "60"),
            *("--plugins", str(plugins), "--state-dir", str(state), "--quiet"),
            *("--shadow-events", "200", "--summary-json", str(summary)),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert agent.stderr is not None
    logs: list[dict[str, Any]] = []
    try:
        read_until(agent.stderr, logs, "watching the plugins folder for changes", 60)
        copy_plugin("tally", plugins, "watched", version="1.1")  # as a package update does
        read_until(agent.stderr, logs, "new plugin version promoted after its shadow run", 60)
    finally:
        agent.send_signal(signal.SIGTERM)
        rest, _ = agent.communicate(timeout=60)
    assert agent.returncode == 0, rest[-3000:]
    events = [e["event"] for e in logs]
    assert "plugins folder changed: reloading" in events
    reloaded = [e for e in logs if e["event"] == "plugins reloaded"]
    assert reloaded[0]["shadow"] == ["watched"]  # one burst of changes, one reload
    rows = {(r["plugin"], r["version"]): r for r in json.loads(summary.read_text())["plugins"]}
    assert rows[("watched", "1.0")]["reason"] == "replaced by version 1.1 after its shadow run"
    assert rows[("watched", "1.1")]["processed"] >= 200
    shown = subprocess.run(
        [
            *(sys.executable, "-m", "agent_host", "plugins", "history", "watched"),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    whats = [line.split()[4] for line in shown.splitlines()]
    assert whats[:4] == ["running", "validated", "shadow", "promoted"], shown
    assert "1.1" in shown.splitlines()[3]
