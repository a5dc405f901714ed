"""What a plugin writes cannot pass for the host's own output: on the terminal, in the log, or
in the findings it reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent_host.host.untrusted import RateLimit, printable
from tests.helpers import exec_event, read_findings, recording, use_plugin

REPO = Path(__file__).resolve().parents[2]
FORGED = "[CRITICAL] host/agent: all clear"


class TestPrintable:
    """Control characters are escaped, and long text is cut."""

    def test_escapes(self) -> None:
        assert printable("a\x1b[2Jb\r\nc\x00\x7f\x9b\u2028\u202e\td") == (
            "a\\x1b[2Jb\\x0d\\x0ac\\x00\\x7f\\x9b\\u2028\\u202e\\x09d"
        )
        assert printable("ünïcode 😀 fine") == "ünïcode 😀 fine"

    def test_cut(self) -> None:
        assert printable("x" * 10, limit=4) == "xxxx ... (6 characters cut)"

    def test_rate_limit(self) -> None:
        limit = RateLimit(10)
        assert sum(limit.allow(0.0) for _ in range(50)) == 10
        assert limit.take_suppressed() == 40
        assert sum(limit.allow(0.5) for _ in range(50)) == 5  # refilled at 10 a second


def test_a_plugin_cannot_forge_the_hosts_output(tmp_path: Path) -> None:
    use_plugin(tmp_path / "plugins", "spoofer")
    recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/id", pid=i) for i in range(1, 4)])
    findings = tmp_path / "findings.jsonl"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "console"),
            *("replay", "rec.jsonl", "--plugins", "plugins", "--findings", str(findings)),
            *("--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream
        assert "\r" not in stream
        assert "\x9b" not in stream
        assert "\u202e" not in stream
        assert not any(line.startswith(FORGED) for line in stream.splitlines())
    # The terminal line of each finding is escaped; the file keeps the exact text, as JSON.
    assert "spoofer/spoof\\x1b[32m: ok\\x0d\\x0a[CRITICAL]" in done.stdout
    written = read_findings(findings)
    assert [f.rule for f in written] == ["spoof\x1b[32m"] * 3
    assert written[0].message == f"ok\r\n{FORGED}\x9b2J"
    # The reserved attribute key cost the imposter its findings.
    assert done.stderr.count("attribute key 'plugin' is reserved") == 3
    # The flood reached the log cut and rate-limited, whatever the worker sent.
    flood = [line for line in done.stderr.splitlines() if "flood " in line]
    assert 0 < len(flood) < 1000
    assert all(len(line) < 4096 + 600 for line in flood)
    assert "characters cut" in flood[0]
    assert "suppressed_before" in done.stderr


def test_the_host_is_not_dumpable(tmp_path: Path) -> None:
    script = (
        "import asyncio, ctypes, ctypes.util\n"
        "from agent_host.host.config import HostConfig\n"
        "from agent_host.host.findings import CollectingSink\n"
        "from agent_host.host.supervisor import Supervisor\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "async def main():\n"
        "    before = libc.prctl(3, 0, 0, 0, 0)\n"
        "    sup = Supervisor(HostConfig(state_dir=None), [], CollectingSink())\n"
        "    await sup.start()\n"
        "    print(before, libc.prctl(3, 0, 0, 0, 0))\n"
        "    await sup.stop()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    # The last line (structlog, unconfigured here, logs to stdout before it).
    assert out.stdout.splitlines()[-1].split() == ["1", "0"]  # dumpable before, not after
