"""A plugin that forks twice, a dozen times, leaves orphans that are no descendants of its
worker (in its pid namespace they belong to the namespace's init): counted by what its cgroup
holds, they are over its ``processes`` limit all the same, and it is stopped for it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import structlog

from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.supervisor import Supervisor
from tests.helpers import exec_event, make_plugin, processes_of

DOUBLE_FORKS = """\
import os, time
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        for _ in range(12):
            if os.fork() == 0:
                if os.fork() == 0:
                    time.sleep(600)  # an orphan: its parent exits at once
                os._exit(0)
            os.wait()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a cgroup per worker needs root")
def test_double_forked_orphans_count_against_the_processes_limit(tmp_path: Path) -> None:
    if not Cgroups().available:
        pytest.skip("no cgroup could be made for a worker")
    # Memory as high as the caps allow, out of the way (each forked copy counts its shared
    # pages), and a batch deadline that leaves the verdict to the process count.
    limits = "[limits]\nprocesses = 8\nmemory_mb = 2048\nbatch_deadline_s = 30\n"
    folder = make_plugin(tmp_path, "forker", DOUBLE_FORKS, extra_toml=limits)
    policy = RestartPolicy(backoff_s=60.0)  # one worker: the verdict on it is what is judged

    async def scenario() -> tuple[list[str], int]:
        sup = Supervisor(
            HostConfig(state_dir=None, batch_size=1, drain_timeout_s=1),
            [Manifest.load(folder / "plugin.toml")],
            CollectingSink(),
            policy,
        )
        await sup.start()
        runner = sup.plugins["forker"]
        uid = runner.sandbox.uid
        with structlog.testing.capture_logs() as logs:
            await sup.publish(exec_event("/usr/bin/id"))
            async with asyncio.timeout(30):
                while not runner.stats.restarts:
                    await asyncio.sleep(0.05)
        await sup.stop()
        reasons = [e["reason"] for e in logs if e["event"] == "stopping worker"]
        return reasons, len(processes_of(uid))

    reasons, left = asyncio.run(scenario())
    assert reasons and reasons[0].startswith("processes ") and reasons[0].endswith("> limit 8")
    assert left == 0  # every orphan died with its worker's cgroup
