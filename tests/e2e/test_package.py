"""The Debian package, built by scripts/build_deb.py, installed for real with dpkg, the daemon
run from it as its unit says, then purged: what an operator installs is what is tested."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _system_python_matches() -> bool:
    """The package's wheels are for this Python's minor version; so must the system's be."""
    if not SYSTEM_PYTHON.exists():
        return False
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys, ensurepip; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    return version.returncode == 0 and version.stdout.strip() == str(sys.version_info[:2])


pytestmark = [
    # 40 s: wheels from the index, dpkg -i, a run, a purge; .ci/run runs it after the test command
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a package needs root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
    pytest.mark.skipif(
        not _system_python_matches(),
        reason=f"{SYSTEM_PYTHON} is not Python {sys.version_info[0]}.{sys.version_info[1]} "
        "with venv (the package's wheels are for the Python that built it)",
    ),
    pytest.mark.skipif(
        Path("/usr/bin/agent-host").exists() or Path("/etc/agent-host").exists(),
        reason="agent-host is installed on this machine already: not the test's to remove",
    ),
]


def test_install_run_and_purge(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_deb.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    package = Path(built.stdout.strip().splitlines()[-1])
    try:
        installed = subprocess.run(
            ["dpkg", "-i", str(package)], capture_output=True, text=True, timeout=600
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        _check_installed(tmp_path)
    finally:
        purged = subprocess.run(
            ["dpkg", "--purge", "agent-host"], capture_output=True, text=True, timeout=300
        )
    assert purged.returncode == 0, purged.stderr
    for gone in (
        "/usr/bin/agent-host",
        "/opt/agent-host",
        "/etc/agent-host",
        "/var/lib/agent-host",
    ):
        assert not Path(gone).exists(), gone


def _check_installed(tmp_path: Path) -> None:
    # On PATH, from its own environment.
    version = subprocess.run(["/usr/bin/agent-host", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("agent-host "), version.stderr
    # The folders, with their modes; the config a commented default that checks clean.
    modes = {
        "/var/lib/agent-host": 0o700,
        "/var/log/agent-host": 0o750,
        "/etc/agent-host/plugins": 0o755,
        "/etc/agent-host/agent-host.toml": 0o644,
        "/etc/logrotate.d/agent-host": 0o644,
    }
    assert {p: stat.S_IMODE(os.stat(p).st_mode) for p in modes} == modes
    checked = subprocess.run(
        ["/usr/bin/agent-host", "config", "check"], capture_output=True, text=True
    )
    assert checked.stdout.endswith("ok (0 settings)\n"), checked.stdout + checked.stderr
    assert "/var/log/agent-host/findings.jsonl" in Path("/etc/logrotate.d/agent-host").read_text()
    # The man page and the completions, generated from the parser.
    man = gzip.decompress(Path("/usr/share/man/man8/agent-host.8.gz").read_bytes()).decode()
    assert man.startswith('.TH AGENT\\-HOST "8"') and "\\-\\-webhook" in man
    completion = "/usr/share/bash-completion/completions/agent-host"
    offered = subprocess.run(
        [
            "bash",
            "-c",
            f"source {completion}; COMP_WORDS=(agent-host run --sys); COMP_CWORD=2; "
            'COMP_LINE="agent-host run --sys"; COMP_POINT=${#COMP_LINE}; _shtab_agent_host; '
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
    )
    assert offered.stdout.split() == ["--syslog"], offered.stderr
    # The daemon, run as its unit runs it (for a few seconds, on the demo source).
    unit = Path("/lib/systemd/system/agent-host.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert command[0] == "/opt/agent-host/venv/bin/agent-host"
    ran = subprocess.run(
        [*command, "--source", "synthetic", "--rate", "200", "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert all(json.loads(line) for line in ran.stderr.splitlines())  # --log-format json
    findings = Path("/var/log/agent-host/findings.jsonl")
    assert findings.stat().st_size > 0 and stat.S_IMODE(findings.stat().st_mode) == 0o600
