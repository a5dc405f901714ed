"""agent-host under systemd: the notify protocol on a socket the test provides as NOTIFY_SOCKET
(READY=1 once the plugins have started, STATUS= counts, WATCHDOG=1 pings from the event loop,
STOPPING=1 on drain; no worker ever sees the socket), and the unit file it ships."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_host.cli.parser import build_parser
from tests.e2e.test_signals import REPO
from tests.helpers import make_plugin

#: Reports, on its first event, whether systemd's variables reached the worker.
NOSY = """\
import os
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.told = False

    def on_event(self, event):
        if self.told:
            return None
        self.told = True
        seen = [k for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if k in os.environ]
        return Finding(rule="env", severity="info", message=",".join(seen) or "none")
"""


def test_the_notify_protocol(tmp_path: Path) -> None:
    make_plugin(tmp_path / "plugins", "nosy", NOSY)
    address = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(0.2)
    findings = tmp_path / "findings.jsonl"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "synthetic", "--rate", "200", "--duration", "30", "--quiet"),
            *("--plugins", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state")),
            *("--findings", str(findings)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "NOTIFY_SOCKET": str(address),
            "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
        },
    )
    messages: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while sum("WATCHDOG=1" in m for m in messages) < 5 and time.monotonic() < deadline:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                continue
        agent.send_signal(signal.SIGTERM)
        while agent.poll() is None and time.monotonic() < deadline:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                continue
    finally:
        if agent.poll() is None:
            agent.kill()
        _, stderr = agent.communicate(timeout=30)
        listener.close()
    assert agent.returncode == 0, stderr[-2000:]
    ready = messages[0].split("\n")
    assert "READY=1" in ready and f"MAINPID={agent.pid}" in ready
    assert "STATUS=plugins: 1 running; " in messages[0]
    pings = [m for m in messages if m.startswith("WATCHDOG=1")]
    assert len(pings) >= 5
    counts = [int(m.split("; ")[1].split()[0]) for m in pings]
    assert counts == sorted(counts) and counts[-1] > counts[0]  # events flow between pings
    assert any(m.startswith("STOPPING=1\nSTATUS=draining") for m in messages[-3:])
    (env,) = [json.loads(line) for line in findings.read_text().splitlines()]
    assert env["message"] == "none"  # the worker never saw systemd's socket


def test_the_shipped_unit(tmp_path: Path) -> None:
    unit = subprocess.run(
        [sys.executable, "-m", "agent_host", "service", "unit"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NotifyAccess=main"):
        assert f"\n{directive}" in unit
    assert f"ExecStart={sys.executable} -m agent_host run " in unit
    # Its command line is one the agent takes (it once said `run --log-format json`, which
    # only the global option took): the options as the daemon will read them.
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)[3:]
    args = build_parser().parse_args(argv)
    assert (args.command, args.log_format, args.quiet) == ("run", "json", True)
    installed = subprocess.run(
        [sys.executable, "-m", "agent_host", "service", "install", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert (tmp_path / "agent-host.service").read_text() == unit, installed.stdout
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was not verified")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "agent-host.service")],
        capture_output=True,
        text=True,
    )
    assert "agent-host.service" not in verify.stderr, verify.stderr  # no complaint about it
