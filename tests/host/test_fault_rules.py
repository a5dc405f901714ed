"""Fault rules an attacker cannot turn against detection, with real workers.

Failures the plugin did not cause do not count toward quarantine; a quarantine ends on probation
and is lifted after a stable run; a quarantine belongs to one version of a plugin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink, JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.runner import PluginRunner
from agent_host.host.store import StateStore
from agent_host.host.supervisor import Supervisor
from tests.helpers import TEST_PLUGINS, exec_event, make_plugin

T = TypeVar("T")

#: Crashes at start while the file named in [config] marker exists.
CRASH_WHILE_MARKED = """\
import os
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        if os.path.exists(config["marker"]):
            os._exit(1)

    def on_event(self, event):
        return Finding(rule="seen", severity="low", message=str(event.seq))
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def marked_plugin(tmp_path: Path, version: str = "1.0") -> tuple[Manifest, Path]:
    # Its worker loads a read-only copy of its folder and sees nothing of the test's but what
    # it is granted: the marker's folder, which its own user may enter.
    markers = tmp_path / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    markers.chmod(0o755)
    marker = markers / "crash"
    folder = make_plugin(
        tmp_path / "plugins",
        "marked",
        CRASH_WHILE_MARKED,
        extra_toml=f'[permissions]\nread = ["{markers}"]\n[config]\nmarker = "{marker}"\n',
    )
    toml = folder / "plugin.toml"
    toml.write_text(toml.read_text().replace('version = "1.0"', f'version = "{version}"'))
    return Manifest.load(toml), marker


class TestNotThePluginsFault:
    """A kill from outside and a failing findings file restart or blame no plugin."""

    def test_sigkill_from_outside_never_quarantines(self, tmp_path: Path) -> None:
        async def scenario() -> PluginRunner:
            tally = Manifest.load(TEST_PLUGINS / "tally" / "plugin.toml")
            sup = Supervisor(
                HostConfig(state_dir=tmp_path / "state"),
                [tally],
                CollectingSink(),
                RestartPolicy(burst=3, backoff_s=0.01),
            )
            await sup.start()
            runner = sup.plugins["tally"]
            for i in range(6):  # twice the breaker's burst, well within its window
                pid = runner.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await until(lambda p=pid: runner.pid != p and runner.phase is Phase.RUNNING)
                await sup.publish(exec_event("/usr/bin/id", pid=i + 1))
            await sup.stop()
            return runner

        runner = run(scenario())
        assert runner.phase is Phase.STOPPED
        assert dict(runner.stats.restarts) == {"killed": 6}
        assert runner.stats.processed == 6
        assert StateStore(tmp_path / "state").quarantined() == {}

    def test_a_full_disk_is_the_hosts_fault(self, tmp_path: Path) -> None:
        async def scenario() -> Supervisor:
            exec_from_tmp = Manifest.load(TEST_PLUGINS / "exec_from_tmp" / "plugin.toml")
            # /dev/full: every write fails with ENOSPC, as on a full filesystem.
            sup = Supervisor(
                HostConfig(state_dir=None, batch_size=10),
                [exec_from_tmp],
                JsonLinesSink(Path("/dev/full"), None),
            )
            await sup.start()
            for i in range(1, 101):
                await sup.publish(exec_event("/tmp/x", pid=i))
            await sup.stop()
            sup.findings.close()
            return sup

        with structlog.testing.capture_logs() as logs:
            sup = run(scenario())
        runner = sup.plugins["exec_from_tmp"]
        assert runner.phase is Phase.STOPPED
        assert dict(runner.stats.restarts) == {}
        assert (runner.stats.processed, runner.stats.dead_lettered) == (100, 0)
        assert (sup.findings.written, sup.findings.lost) == (0, 100)
        errors = [e for e in logs if e["event"].startswith("findings could not be written")]
        assert len(errors) == 1  # once, not once per batch
        assert errors[0]["error"] == "No space left on device"


class TestProbation:
    """A quarantine is served, retried on probation with growing periods, and lifted."""

    def test_quarantine_probation_and_release(self, tmp_path: Path) -> None:
        manifest, marker = marked_plugin(tmp_path)
        marker.touch()
        policy = RestartPolicy(
            burst=2, backoff_s=0.01, quarantine_periods_s=(0.3, 0.6), probation_s=0.5
        )

        async def scenario() -> tuple[list[int], Supervisor]:
            sup = Supervisor(
                HostConfig(state_dir=tmp_path / "state"), [manifest], CollectingSink(), policy
            )
            await sup.start()
            runner = sup.plugins["marked"]
            levels = []
            await until(lambda: runner.phase is Phase.QUARANTINED)
            levels.append(runner.life.quarantine_level)
            await until(lambda: runner.life.quarantine_level == 2)  # failed on probation
            levels.append(runner.life.quarantine_level)
            assert runner.reason == "failed on probation: exit code 1"
            q = sup.store.quarantine_of("marked", "1.0")
            assert q is not None
            assert q.level == 2
            marker.unlink()  # fixed: the next probation passes
            await until(lambda: runner.phase is Phase.RUNNING)
            await until(lambda: runner.life.quarantine_level == 0)
            await sup.publish(exec_event("/usr/bin/id"))
            await sup.stop()
            return levels, sup

        with structlog.testing.capture_logs() as logs:
            levels, sup = run(scenario())
        assert levels == [1, 2]
        assert StateStore(tmp_path / "state").quarantined() == {}
        runner = sup.plugins["marked"]
        assert (runner.phase, runner.stats.processed) == (Phase.STOPPED, 1)
        assert any(e["event"] == "probation passed; quarantine lifted" for e in logs)

    def test_a_quarantine_belongs_to_a_version(self, tmp_path: Path) -> None:
        manifest, _ = marked_plugin(tmp_path)
        store = StateStore(tmp_path / "state")
        store.quarantine("marked", "1.0", "5 failures", level=1, retry_in_s=3600)
        store.close()

        async def scenario(m: Manifest) -> PluginRunner:
            sup = Supervisor(HostConfig(state_dir=tmp_path / "state"), [m], CollectingSink())
            await sup.start()
            await sup.publish(exec_event("/usr/bin/id"))
            await sup.stop()
            return sup.plugins["marked"]

        held = run(scenario(manifest))
        assert held.phase is Phase.QUARANTINED
        assert held.reason.startswith("quarantined since an earlier run: 5 failures")
        assert held.stats.undelivered == 1
        newer, _ = marked_plugin(tmp_path / "v2", version="1.1")
        fresh = run(scenario(newer))
        assert (fresh.phase, fresh.stats.processed) == (Phase.STOPPED, 1)
