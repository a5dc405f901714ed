"""agent-host as an operator installs it: built into a wheel, installed (not editable) and run
from / with no --plugins: the bundled plugins come with the package, nothing from the start
folder is loaded, and the systemd unit is in the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_signals import REPO


@pytest.mark.slow  # 9 s: run after the test command by .ci/run
def test_installed_and_run_from_root_with_the_bundled_plugins(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)]
    subprocess.run(build, capture_output=True, check=True)
    (wheel,) = wheels.glob("agent_host-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, capture_output=True, check=True)
    assert (site / "agent_host" / "cli" / "agent-host.service").is_file()
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [
            *(sys.executable, "-m", "agent_host", "run", "--source", "synthetic"),
            *("--duration", "2", "--quiet", "--state-dir", str(tmp_path / "state")),
            *("--summary-json", str(summary)),
        ],
        cwd="/",
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(site)},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(summary.read_text())["plugins"]
    assert sorted(r["plugin"] for r in rows) == [
        "ransomware_burst",
        "sigma",
        "suspicious_exec",
        "yara_scan",
    ]
    assert all(r["state"] == "stopped" and r["processed"] > 0 for r in rows)
    # It was the installed copy that ran, and a ./plugins of the start folder is not read.
    start = tmp_path / "start"
    (start / "plugins" / "planted").mkdir(parents=True)
    (start / "plugins" / "planted" / "plugin.toml").write_text(
        '[plugin]\nname = "planted"\nversion = "1"\nentrypoint = "x:X"\nsubscribe = ["process"]\n'
    )
    probe = "import agent_host; print(agent_host.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe],
        cwd="/",
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(site)},
        check=True,
    ).stdout
    assert where.strip() == str(site / "agent_host" / "__init__.py")
    listed = subprocess.run(
        [sys.executable, "-m", "agent_host", "plugins", "list", "--state-dir", str(tmp_path)],
        cwd=start,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(site)},
        check=True,
    ).stdout
    assert "sigma" in listed and "planted" not in listed
