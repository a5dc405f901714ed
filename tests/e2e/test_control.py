"""The control socket of a running agent: ``status`` while events flow, ``tail`` of findings
as they are written, a quarantine lifted with ``plugins release`` that the running host acts
on at once, and a plugin restarted on a new worker with ``plugins restart``, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_host.host.store import StateStore
from tests.e2e.test_signals import REPO, copy_plugin

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def agent_host(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_host", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


def status(state: Path) -> dict[str, Any]:
    shown = agent_host("status", "--json", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    reply: dict[str, Any] = json.loads(shown.stdout)
    return reply


def plugin(reply: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in reply["plugins"] if p["name"] == name)


@pytest.mark.slow  # 12 s: run after the test command by .ci/run
def test_status_tail_release_and_restart(tmp_path: Path) -> None:
    plugins, state = tmp_path / "plugins", tmp_path / "state"
    copy_plugin("exec_from_tmp", plugins, "catcher")
    copy_plugin("tally", plugins, "benched")
    copy_plugin("tally", plugins, "steady")
    store = StateStore(state)
    store.quarantine("benched", "1.0", "set aside by the test", level=1, retry_in_s=3600)
    store.close()
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "run", "--source", "synthetic"),
            *("--rate", "500", "--duration", "120", "--quiet", "--no-watch-plugins"),
            *("--plugins", str(plugins), "--state-dir", str(state)),
            *("--summary-json", str(tmp_path / "summary.json")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    socket_path = state / "control.sock"
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            assert agent.poll() is None and time.monotonic() < deadline, "no control socket"
            time.sleep(0.1)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        first = status(state)
        assert plugin(first, "benched")["state"] == "quarantined"
        catcher = plugin(first, "catcher")
        assert catcher["state"] == "running" and "seccomp" in catcher["sandbox_layers"]

        tail = subprocess.Popen(
            [sys.executable, "-m", "agent_host", "tail", "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert tail.stdout is not None
        tailed = [json.loads(tail.stdout.readline()) for _ in range(3)]
        tail.terminate()
        tail.communicate(timeout=30)
        assert {f["plugin"] for f in tailed} == {"catcher"}
        assert all(f["rule"] == "exec_tmp" and f["id"] for f in tailed)

        released = agent_host("plugins", "release", "benched", "--state-dir", str(state))
        assert released.returncode == 0, released.stderr
        assert "the running host: benched starts again, on probation" in released.stdout
        while plugin(status(state), "benched")["state"] != "running":
            assert time.monotonic() < deadline, "never started again"
            time.sleep(0.2)
        later = status(state)
        assert int(later["host"]["events_accepted"]) > int(first["host"]["events_accepted"])
        assert later["host"]["events_per_s"] > 0

        restarted = agent_host("plugins", "restart", "catcher", "--state-dir", str(state))
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip() == "catcher restarts on a new worker"
        while plugin(status(state), "catcher").get("restarts_by_cause") != {"operator": 1}:
            assert time.monotonic() < deadline, "never restarted"
            time.sleep(0.2)
        while plugin(status(state), "catcher")["state"] != "running":
            assert time.monotonic() < deadline, "never running again"
            time.sleep(0.2)
        refused = agent_host("plugins", "restart", "nobody", "--state-dir", str(state))
        assert refused.returncode == 1 and "no plugin 'nobody' runs here" in refused.stdout
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["plugin"]: r for r in summary["plugins"]}
    row = rows["catcher"]
    # The restart lost nothing and was no failure: every event processed once, none set aside.
    assert row["restarts"] == {"operator": 1} and row["state"] == "stopped"
    assert row["processed"] == rows["steady"]["processed"] > 0
    assert rows["steady"]["restarts"] == {}
    assert row["dead_lettered"] == row["undelivered"] == 0
    assert not socket_path.exists()  # removed on the way out
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (stopping,) = [e for e in logs if e["event"] == "stopping worker"]
    assert (stopping["cause"], stopping["level"]) == ("operator", "info")  # not an error
    gone = agent_host("status", "--state-dir", str(state))
    assert gone.returncode == 2 and "no running host" in gone.stderr
