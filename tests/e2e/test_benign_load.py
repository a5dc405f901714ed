"""Ordinary developer work on a machine watched by every bundled plugin raises nothing above
INFO: a git clone, a venv with a package installed into it under /tmp, a test run, a build.

Slow (half a minute): ``pytest -m slow tests/e2e/test_benign_load.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent_host.protocol import Finding
from agent_host.sources.live import audit
from agent_host.sources.live.fanotify_sensor import fanotify_unavailable
from tests.helpers import BackgroundHost, read_findings

pytestmark = pytest.mark.usefixtures("audit_lock")  # one audit reader a machine

REPO = Path(__file__).resolve().parents[2]
_why = ("needs root" if os.geteuid() else "") or audit.unavailable() or fanotify_unavailable()

HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
MAKEFILE = "hello: hello.c\n\tcc -O2 -o hello hello.c\n"


@pytest.mark.slow
@pytest.mark.skipif(bool(_why), reason=f"live sensors: {_why}")
@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_developer_work_raises_nothing_above_info() -> None:
    work = Path(tempfile.mkdtemp(prefix="benign-"))  # under /tmp, as a developer's would be
    host = BackgroundHost(
        [
            *(
                "run",
                "--sensors",
                "process,file,network",
                "--plugins",
                str(REPO / "agent_host" / "plugins"),
            ),
            *("--watch", "/tmp", "--watch", "/etc", "--watch", "/root"),
            *("--findings", "f.jsonl", "--quiet"),
        ],
        work,
    )
    try:
        host.wait_log("sensor started", count=2)
        clone, venv = work / "clone", work / "venv"

        def run(*command: str | Path, cwd: Path = work) -> None:
            subprocess.run([str(c) for c in command], cwd=cwd, check=True, capture_output=True)

        run(sys.executable, "-m", "venv", venv)
        run(venv / "bin" / "pip", "install", "-q", "iniconfig", "packaging")  # from the registry
        # A project of ordinary code to clone (this one's own tests are full of attack
        # strings, which content rules rightly report): pip's sources, as a repository.
        project = work / "project"
        shutil.copytree(next((venv / "lib").glob("python*/site-packages/pip")), project)
        run("git", "init", "-q", cwd=project)
        run("git", "add", ".", cwd=project)
        run(
            "git",
            "-c",
            "user.name=dev",
            "-c",
            "user.email=dev@example.org",
            "commit",
            "-qm",
            "x",
            cwd=project,
        )
        run("git", "clone", "-q", project, clone)
        (clone / "test_sample.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
        run(
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_sample.py",
            cwd=clone,
        )
        if shutil.which("make") and shutil.which("cc"):
            (work / "hello.c").write_text(HELLO)
            (work / "Makefile").write_text(MAKEFILE)
            run("make", "-s")
        code, _ = host.stop()
        assert code == 0
        findings = read_findings(work / "f.jsonl")
        loud = [
            (f.plugin, f.rule, f.message, dict(f.attributes))
            for f in findings
            if f.severity > Finding.INFO
        ]
        assert loud == [], "\n".join(map(str, loud))
    finally:
        if host.proc.poll() is None:
            host.proc.kill()
            host.stop()
        shutil.rmtree(work, ignore_errors=True)
