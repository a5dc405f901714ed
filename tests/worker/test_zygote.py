"""The zygote: workers forked from a pre-initialised process, and what happens when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.spawn import ZygoteSpawner
from agent_host.host.supervisor import Supervisor
from tests.helpers import TEST_PLUGINS, exec_event, read_findings


def manifests() -> list[Manifest]:
    return [Manifest.load(TEST_PLUGINS / n / "plugin.toml") for n in ("tally", "exec_from_tmp")]


async def until(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class TestZygote:
    """Workers are the zygote's children; without it, they are the host's."""

    @pytest.mark.parametrize("zygote", [True, False])
    def test_who_starts_workers(self, tmp_path: Path, zygote: bool) -> None:
        async def scenario() -> list[int]:
            sup = Supervisor(
                HostConfig(zygote=zygote, state_dir=None), manifests(), JsonLinesSink(None, None)
            )
            await sup.start()
            parents = [
                psutil.Process(h.pid).ppid() for h in sup.plugins.values() if h.pid is not None
            ]
            uses_zygote = isinstance(sup._spawner, ZygoteSpawner)
            zygote_pid = sup._spawner.parent_pid if uses_zygote else None
            await sup.stop()
            return [*parents, zygote_pid or 0]

        *parents, zygote_pid = asyncio.run(scenario())
        if zygote:
            assert zygote_pid not in (0, os.getpid())
            assert parents == [zygote_pid, zygote_pid]
        else:
            assert parents == [os.getpid(), os.getpid()]

    def test_zygote_death_falls_back_to_exec_and_loses_nothing(self, tmp_path: Path) -> None:
        findings = tmp_path / "f.jsonl"

        async def scenario() -> Supervisor:
            sup = Supervisor(
                HostConfig(batch_size=8, state_dir=None), manifests(), JsonLinesSink(findings, None)
            )
            await sup.start()
            spawner = sup._spawner
            assert isinstance(spawner, ZygoteSpawner)
            for i in range(1, 501):
                await sup.publish(exec_event("/tmp/z" if i % 25 == 0 else "/usr/bin/y", pid=i))
            forked = {h.pid for h in sup.plugins.values()}
            os.kill(spawner.parent_pid, signal.SIGKILL)  # the zygote, and with it every worker
            await until(lambda: not spawner.alive)
            for i in range(501, 1001):
                await sup.publish(exec_event("/tmp/z" if i % 25 == 0 else "/usr/bin/y", pid=i))
            # Running again, each on a new worker (not the dying one the host has yet to reap).
            await until(
                lambda: all(
                    h.phase is Phase.RUNNING and h.pid not in forked for h in sup.plugins.values()
                )
            )
            for handle in sup.plugins.values():
                assert handle.pid is not None
                assert psutil.Process(handle.pid).ppid() == os.getpid()  # exec'd now
            await sup.stop()
            sup.findings.close()
            return sup

        with structlog.testing.capture_logs() as logs:
            sup = asyncio.run(scenario())
        assert any(e["event"] == "zygote is gone; workers will be exec'd from now on" for e in logs)
        found = read_findings(findings)
        # (tally's own count lives in its worker's memory, which the zygote's death wiped.)
        caught = sorted(f.event_ids[0] for f in found if f.plugin == "exec_from_tmp")
        assert caught == list(range(25, 1001, 25))
        for handle in sup.plugins.values():
            assert handle.stats.restarts.total() >= 1
            assert handle.stats.processed == 1000


def test_a_namespace_init_waits_on_its_parent_and_no_longer() -> None:
    """The init's wait ends when its parent exits, whether or not PDEATHSIG came (a credential
    change clears it; a parent that died just then sent none)."""
    from agent_host.worker.sandbox.pidns import parent_alive_after

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        started = time.monotonic()
        assert parent_alive_after(pidfd) is False  # blocks until the process has exited
        assert time.monotonic() - started < 30
    finally:
        os.close(pidfd)
        child.wait()
