"""A worker runs under its manifest's limits, set by the worker on itself before it gives up
its privileges: they hold even where the host could not set them from outside."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest
import structlog

from agent_host.host import child
from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.supervisor import Supervisor
from tests.helpers import make_plugin

LIMITS = "[limits]\nopen_files = 77\nmemory_mb = 300\nprocesses = 20\n"


def limits_of(pid: int) -> dict[str, str]:
    """/proc/PID/limits: each limit's soft value, by name."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:47].strip() for line in lines}


def refused(*args: object, **kwargs: object) -> None:
    raise psutil.AccessDenied()


def test_a_worker_holds_its_manifests_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "from agent_host.sdk import Plugin\nclass Detector(Plugin): pass\n"
    folder = make_plugin(tmp_path, "limited", code, extra_toml=LIMITS)
    # As a host without CAP_SYS_RESOURCE: its own prlimit of the worker fails.
    monkeypatch.setattr(child, "apply_hard_limits", refused)

    async def scenario() -> tuple[dict[str, str], list[str]]:
        sup = Supervisor(
            HostConfig(state_dir=None), [Manifest.load(folder / "plugin.toml")], CollectingSink()
        )
        with structlog.testing.capture_logs() as logs:
            await sup.start()
            runner = sup.plugins["limited"]
            assert runner.phase is Phase.RUNNING and runner.pid is not None
            seen = limits_of(runner.pid)
            await sup.stop()
        return seen, [e["event"] for e in logs if e["log_level"] in ("warning", "error")]

    seen, complaints = asyncio.run(scenario())
    assert seen["Max open files"] == "77"
    assert seen["Max data size"] == str((300 + 256) * 1024 * 1024)
    assert seen["Max core file size"] == "0"
    if os.geteuid() == 0:  # a uid of its own: its processes and threads are counted
        assert seen["Max processes"] == str(20 + 128)
    assert "worker not watched for its resources" not in complaints
