"""A cgroup per worker: what a plugin starts dies with its worker, and memory it hides from the
resident-memory watcher still counts. Real workers, real cgroups (root, v1 or v2)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import structlog

from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.supervisor import Supervisor
from tests.helpers import exec_event, make_plugin, processes_of


def cgroups_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Cgroups()
    probe.close()  # the probe's own cgroup, not left behind
    return probe.available


needs_cgroups = pytest.mark.skipif(
    not cgroups_available(), reason="needs root and a writable memory and pids cgroup hierarchy"
)

#: On its first event, leaves a daemon behind: setsid and a double fork, out of its group.
DAEMON = """\
import os, time
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.pid_file = config["pid_file"]

    def on_event(self, event):
        if os.path.exists(self.pid_file):
            return None
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(self.pid_file, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(300)
            os._exit(0)
        while not os.path.exists(self.pid_file):
            time.sleep(0.01)
        return None
"""

#: Writes 400 MiB into a memfd it never maps: no resident memory to see, but page cache.
MEMFD = """\
import os
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        fd = os.memfd_create("hoard")
        chunk = b"x" * (16 << 20)
        for _ in range(25):
            os.write(fd, chunk)
        self.fd = fd
        return None
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def host_over(
    manifest: Manifest,
    events: int,
    policy: RestartPolicy | None = None,
    running: list[int] | None = None,
) -> Supervisor:
    """Run ``manifest`` over ``events`` events; ``running`` gets the pids of the processes of
    the plugin's user once they are processed (before the host stops)."""
    sup = Supervisor(HostConfig(state_dir=None), [manifest], CollectingSink(), policy)
    await sup.start()
    for i in range(1, events + 1):
        await sup.publish(exec_event("/usr/bin/id", pid=i))
    await sup.drain()
    if running is not None:
        running += processes_of(sup.plugins[manifest.name].sandbox.uid)
    await sup.stop()
    return sup


@needs_cgroups
class TestCgroups:
    """Everything a worker starts is in its cgroup, and leaves with it."""

    def test_a_setsid_daemon_dies_with_its_worker(self, tmp_path: Path) -> None:
        folder = make_plugin(
            tmp_path / "plugins",
            "daemon",
            DAEMON,
            # In the worker's private /tmp: the daemon says there that it is up.
            extra_toml='[config]\npid_file = "/tmp/daemon.pid"\n',
        )
        running: list[int] = []
        with structlog.testing.capture_logs() as logs:
            sup = asyncio.run(host_over(Manifest.load(folder / "plugin.toml"), 3, None, running))
        assert len(running) >= 2  # the worker and its daemon (and a zombie), seen from the host
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in running)
        assert sup.plugins["daemon"].phase is Phase.STOPPED
        active = next(e for e in logs if e["event"] == "sandbox layers active")
        assert "cgroup" in active["layers"].split()

    def test_memory_hidden_in_a_memfd_still_counts(self, tmp_path: Path) -> None:
        folder = make_plugin(
            tmp_path / "plugins", "memfd", MEMFD, extra_toml="[limits]\nmemory_mb = 100\n"
        )
        policy = RestartPolicy(backoff_s=0.01)
        with structlog.testing.capture_logs() as logs:
            sup = asyncio.run(host_over(Manifest.load(folder / "plugin.toml"), 1, policy))
        runner = sup.plugins["memfd"]
        # Killed by the kernel for the cgroup's limit, which is the plugin's doing: twice for
        # the batch, once more to pin the event, which is set aside.
        assert dict(runner.stats.restarts) == {"memory": 3}
        assert runner.stats.dead_lettered == 1
        assert runner.phase is Phase.STOPPED
        died = [e["cause"] for e in logs if e["event"] == "worker died"]
        assert died == ["memory 356 MiB (cgroup, memfd and tmpfs pages included) reached"] * 3


def test_without_cgroups_the_host_says_so(tmp_path: Path) -> None:
    cgroups = Cgroups(root=tmp_path)  # nothing mounted here
    assert not cgroups.available
    assert cgroups.unavailable == "no memory and pids controllers mounted"
