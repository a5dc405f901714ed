"""Shared test helpers: make plugins and recordings, run the real agent-host command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent_host.protocol import Event, Finding, ProcessEvent, message_from_json
from agent_host.sources.replay import write_recording

TEST_PLUGINS = Path(__file__).parent / "plugins"
#: The plugins that ship with agent-host.
BUNDLED_PLUGINS = Path(__file__).resolve().parents[1] / "agent_host" / "plugins"
#: SigmaHQ's Linux rules, beside the checkout (test data: read from there, never copied).
SIGMAHQ = Path(__file__).resolve().parents[2] / "shared" / "sigma-linux"


def make_plugin(
    root: Path,
    name: str,
    code: str,
    subscribe: tuple[str, ...] = ("process",),
    extra_toml: str = "",
    entrypoint: str | None = None,
) -> Path:
    """Write a plugin folder under ``root`` and return it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ", ".join(f'"{k}"' for k in subscribe)
    (folder / "plugin.toml").write_text(
        textwrap.dedent(f"""\
        [plugin]
        name = "{name}"
        version = "1.0"
        entrypoint = "{entrypoint or "detector:Detector"}"
        subscribe = [{kinds}]
        """)
        + textwrap.dedent(extra_toml)
    )
    (folder / "detector.py").write_text(textwrap.dedent(code))
    return folder


def sigmahq_plugin(plugins: Path) -> Path:
    """The bundled sigma plugin in ``plugins``, loading SigmaHQ's Linux rules instead of its own."""
    sigma = plugins / "sigma"
    sigma.mkdir(parents=True)
    for name in ("detector.py", "engine.py", "fields.py", "plan.py"):
        shutil.copy(BUNDLED_PLUGINS / "sigma" / name, sigma / name)
    manifest = (BUNDLED_PLUGINS / "sigma" / "plugin.toml").read_text()
    (sigma / "plugin.toml").write_text(
        manifest.replace('rule_dirs = ["rules"]', f'rule_dirs = ["{SIGMAHQ}"]').replace(
            'read = ["/etc/agent-host/sigma"]', f'read = ["{SIGMAHQ}"]'
        )
    )
    return sigma


def processes_of(uid: int) -> list[int]:
    """The pids of every process of user ``uid`` (a plugin's workers, and what they left)."""
    return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]


def use_plugin(root: Path, name: str) -> Path:
    """Link one of tests/plugins/ into ``root`` (a plugins folder for one test)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    target.symlink_to(TEST_PLUGINS / name, target_is_directory=True)
    return target


def exec_event(exe: str, pid: int = 100) -> Event:
    return Event(
        process=ProcessEvent(
            action=ProcessEvent.START,
            pid=pid,
            ppid=1,
            exe=exe,
            cmdline=[exe],
            user="dev",
            parent_exe="/usr/bin/bash",
        )
    )


def recording(path: Path, events: list[Event]) -> Path:
    write_recording(path, events)
    return path


@dataclass
class HostRun:
    returncode: int
    stdout: str
    stderr: str
    logs: list[dict[str, Any]]
    summary: dict[str, Any] | None
    findings: list[Finding]

    def plugin(self, name: str) -> dict[str, Any]:
        assert self.summary is not None, self.stderr
        return next(p for p in self.summary["plugins"] if p["plugin"] == name)

    def logs_with(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == event]


def read_findings(path: Path) -> list[Finding]:
    if not path.exists():
        return []
    return [message_from_json(line, Finding()) for line in path.read_text().splitlines()]


def agent_host(
    args: list[str], cwd: Path, timeout: float = 120, log_level: str = "info"
) -> HostRun:
    """Run the real ``agent-host`` command with JSON logs; collect what it wrote."""
    findings = cwd / "findings.jsonl"
    summary = cwd / "summary.json"
    findings.unlink(missing_ok=True)
    summary.unlink(missing_ok=True)
    command = [sys.executable, "-m", "agent_host", "--log-format", "json"]
    command += ["--log-level", log_level, *args]
    if args and args[0] in ("replay", "run"):
        command += ["--findings", str(findings), "--summary-json", str(summary)]
    if (
        args
        and args[0] in ("replay", "run", "plugins", "deadletters")
        and "--state-dir" not in args
        and args[:2] != ["plugins", "new"]
    ):
        # Never the user's own state: a quarantine must not leak from one test to the next.
        command += ["--state-dir", str(cwd / "state")]
    proc = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    return HostRun(
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        logs=parse_logs(proc.stderr),
        summary=json.loads(summary.read_text()) if summary.exists() else None,
        findings=read_findings(findings),
    )


def parse_logs(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            entries.append({"event": "(not json)", "line": line})
    return entries


class BackgroundHost:
    """A real agent-host command running in the background, its log in a file."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        """``wrap``: the command run instead of the agent-host command it is given."""
        self.cwd = cwd
        self.log_path = cwd / f"host-{len(list(cwd.glob('host-*.log')))}.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "agent_host", "--log-format", "json", *args]
        if "--state-dir" not in args and args[0] != "record":
            command += ["--state-dir", str(cwd / "state")]
        if wrap is not None:
            command = wrap(command)
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )

    def logs(self) -> list[dict[str, Any]]:
        return parse_logs(self.log_path.read_text())

    def wait_log(self, event: str, count: int = 1, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while sum(1 for e in self.logs() if e.get("event") == event) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {event!r} in:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM it; return its exit code and standard output."""
        import signal

        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        self._log.close()
        return self.proc.returncode, out


def _dns_answer(query: bytes, address: str) -> bytes:
    """The response to ``query`` (one question) with one A record for ``address``."""
    header = query[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
    record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(address)
    return header + query[12:] + record


def named_connection(name: str, address: str) -> int:
    """A process looks ``name`` up at a DNS server of the test's on loopback port 53 (root),
    which answers ``address``, and connects there; returns the port it connected to."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.create_server((address, 0)) as target,
    ):
        server.bind(("127.0.0.1", 53))
        port = int(target.getsockname()[1])
        program = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto({query!r}, ('127.0.0.1', 53)); answer = s.recv(512)\n"
            f"socket.create_connection((socket.inet_ntoa(answer[-4:]), {port})).close()\n"
        )
        client = subprocess.Popen([sys.executable, "-c", program])
        asked, where = server.recvfrom(512)
        server.sendto(_dns_answer(asked, address), where)
        if client.wait(timeout=10) != 0:
            raise AssertionError("the client could not look up and connect")
    return port
