"""replay shows a progress bar on a terminal (events, their rate, the time left), and nothing
of the kind where no one reads it: a pipe, or a JSON log."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.helpers import exec_event, recording, use_plugin

REPO = Path(__file__).resolve().parents[2]


def replay_on(tmp_path: Path, *, terminal: bool, log_format: str = "auto") -> str:
    """What a replay of a long recording writes on its stderr."""
    plugins = tmp_path / "plugins"
    if not plugins.exists():
        use_plugin(plugins, "tally")
    events = tmp_path / "events.jsonl"
    if not events.exists():
        recording(events, [exec_event(f"/usr/bin/tool{n % 50}", n) for n in range(40_000)])
    command = [sys.executable, "-m", "agent_host", "--log-format", log_format, "replay"]
    command += [str(events), "--plugins", str(plugins), "--quiet"]
    command += ["--state-dir", str(tmp_path / "state")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return done.stderr
    reader, writer = pty.openpty()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=writer, env=env)
    os.close(writer)
    said = b""
    while True:
        try:
            chunk = os.read(reader, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        said += chunk
    os.close(reader)
    assert proc.wait(timeout=120) == 0, said.decode(errors="replace")[-2000:]
    return said.decode(errors="replace")


def test_a_terminal_shows_how_far_how_fast_and_how_long(tmp_path: Path) -> None:
    said = replay_on(tmp_path, terminal=True)
    bars = [part for part in said.split("\r") if part.startswith("replay ")]
    assert bars, said[-2000:]
    last = bars[-1]
    assert "%|" in last and " events, " in last and "/s" in last and "<" in last


def test_no_bar_in_a_pipe_or_a_json_log(tmp_path: Path) -> None:
    assert "%|" not in replay_on(tmp_path, terminal=False)
    said = replay_on(tmp_path, terminal=True, log_format="json")
    assert "%|" not in said
