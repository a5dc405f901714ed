"""A host that is not running (SIGSTOP, a frozen VM) blames no plugin for it: after SIGCONT no
healthy worker is killed as hung, and no restart is counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_plugin, use_plugin

REPO = Path(__file__).resolve().parents[2]

BUSY = """\
import time
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        time.sleep(0.002)  # a batch of 256 takes about half a second: often one in hand
"""


@pytest.mark.slow  # about 20 s: two pauses longer than every deadline
def test_a_paused_host_blames_no_plugin(tmp_path: Path) -> None:
    use_plugin(tmp_path / "plugins", "tally")  # idle between batches: judged by heartbeats
    make_plugin(tmp_path / "plugins", "busy", BUSY, extra_toml="[limits]\nbatch_deadline_s = 2\n")
    summary = tmp_path / "summary.json"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "synthetic", "--rate", "400", "--duration", "18"),
            *("--plugins", "plugins", "--quiet", "--summary-json", str(summary)),
            *("--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        time.sleep(3)
        for _ in range(2):  # each pause longer than the heartbeat (5 s) and batch deadlines
            os.kill(agent.pid, signal.SIGSTOP)
            time.sleep(6)
            os.kill(agent.pid, signal.SIGCONT)
            time.sleep(1.5)
        _, stderr = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, stderr[-3000:]
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "the host was not running; deadlines moved on" for e in logs) == 2
    assert not [e for e in logs if e["event"] in ("stopping worker", "worker died")]
    rows = {r["plugin"]: r for r in json.loads(summary.read_text())["plugins"]}
    assert rows["tally"]["restarts"] == rows["busy"]["restarts"] == {}
    assert rows["busy"]["processed"] == rows["tally"]["processed"] > 0
