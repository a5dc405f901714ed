"""A plugin that burns cores while it holds a batch (three spinning processes) is held to its
``cpu_cores`` by the kernel: the idle-CPU watcher does not judge a busy worker, and its batch
deadline can be long, so without a cpu cgroup it would take the machine's cores for that long."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.limits import ResourceMonitor
from agent_host.host.manifest import Limits, Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.sandbox import machine_report
from agent_host.host.supervisor import Supervisor
from tests.helpers import exec_event, make_plugin

BURNER = """\
import os
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        os.fork()
        os.fork()  # four processes, each spinning on a core of its own if it can
        while True:
            pass
"""


def cpu_bound_available() -> str:
    """Why a worker cannot be given a CPU bound here ("" if it can)."""
    if os.geteuid() != 0:
        return "a cgroup per worker needs root"
    probe = Cgroups()
    probe.close()
    if not probe.available:
        return f"no cgroup could be made: {probe.unavailable}"
    return probe.cpu_unavailable


@pytest.mark.slow  # 6 s: 3 s of four spinners; .ci/run runs it after the test command
@pytest.mark.skipif(bool(cpu_bound_available()), reason=cpu_bound_available() or "-")
def test_a_burner_holding_a_batch_is_held_to_its_cpu_cores(tmp_path: Path) -> None:
    limits = "[limits]\ncpu_cores = 0.5\nbatch_deadline_s = 60\nmemory_mb = 2048\n"
    folder = make_plugin(tmp_path, "burner", BURNER, extra_toml=limits)

    async def scenario() -> float:
        sup = Supervisor(
            HostConfig(state_dir=None, batch_size=1, drain_timeout_s=1, stop_timeout_s=1),
            [Manifest.load(folder / "plugin.toml")],
            CollectingSink(),
            RestartPolicy(backoff_s=60.0),
        )
        await sup.start()
        runner = sup.plugins["burner"]
        assert runner.worker is not None and runner.worker.child.cgroup is not None
        cgroup = runner.worker.child.cgroup
        await sup.publish(exec_event("/usr/bin/id"))
        # The worker and its three forks spin: measured from their cgroup, which holds them
        # all however many there are yet (a count by uid once waited 30 s for four in CI).
        async with asyncio.timeout(30):
            while len(cgroup.pids()) < 4:
                await asyncio.sleep(0.05)
        start, used_before = time.monotonic(), cgroup.cpu_seconds()
        await asyncio.sleep(3)
        used_after = cgroup.cpu_seconds()
        assert used_before is not None and used_after is not None  # the cpu layer is there
        cores = (used_after - used_before) / (time.monotonic() - start)
        await sup.stop()
        return cores

    # Unbound, four spinners take every core the machine has free (1.85 of 2 measured).
    assert asyncio.run(scenario()) <= 0.5 * 1.3


def test_the_cpu_layer_is_reported_by_name_where_there_is_no_cpu_controller(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids"):
        (root / controller).mkdir(parents=True)
    cgroups = Cgroups(root)  # a v1 layout of memory and pids alone, as some machines mount
    layers = {layer.name: layer for layer in machine_report("", cgroups).layers}
    if cgroups.available:  # as root: the folders could be made
        assert not layers["cpu"].active
        assert layers["cpu"].reason.startswith("no cpu cgroup controller mounted")
    else:
        assert not layers["cpu"].active and layers["cpu"].reason == layers["cgroup"].reason


def test_without_a_cpu_cgroup_the_watcher_kills_a_busy_worker_above_its_cpu_cores() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        verdicts = {}
        for bound in (False, True):
            monitor = ResourceMonitor(spinner.pid, Limits(cpu_cores=0.3, cpu_window_s=1.0))
            monitor.kernel_cpu_bound = bound
            verdict = None
            deadline = time.monotonic() + (3 if not bound else 1.5)  # 1.5: past one window
            while verdict is None and time.monotonic() < deadline:
                verdict = monitor.sample(time.monotonic(), idle=False)  # a batch in hand
                time.sleep(0.1)
            verdicts[bound] = verdict
    finally:
        spinner.kill()
        spinner.wait()
    unbound = verdicts[False]
    assert unbound is not None and unbound.cause == "cpu"
    assert "> cpu_cores 0.3 over 1s (no cpu cgroup to hold it there)" in unbound.detail
    assert verdicts[True] is None  # the kernel holds it there: nothing for the watcher to do
