"""A plugin whose worker can never be started (the host is out of file descriptors for it, say)
wedges nothing: it is set aside with the reason, the events it was owed are counted
undelivered, and the source and every other plugin carry on and lose nothing.

The host is real (real workers for the other plugins, real gRPC); only the victim's fork fails,
as it did under ``prlimit --nofile=32``, through a spawner that refuses that one plugin."""

from __future__ import annotations

import asyncio
import errno
import shutil
import tomllib
from pathlib import Path

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.spawn import ExecSpawner, WorkerProcess
from agent_host.host.store import StateStore
from agent_host.host.supervisor import Supervisor
from tests.helpers import TEST_PLUGINS, exec_event, read_findings

EVENTS = 20_000


class RefusingSpawner(ExecSpawner):
    """Real workers, except for the plugin named ``refused``, whose fork always fails."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.refusals = 0

    async def spawn(self, args: list[str], cwd: Path, broker_fd: int) -> WorkerProcess:
        name = tomllib.loads((cwd / "plugin.toml").read_text())["plugin"]["name"]
        if name == self.refused:
            self.refusals += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await super().spawn(args, cwd, broker_fd)


def test_a_plugin_that_cannot_start_holds_nothing_back(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    shutil.copytree(TEST_PLUGINS / "tally", victim)
    toml = victim / "plugin.toml"
    toml.write_text(toml.read_text().replace('name = "tally"', 'name = "victim"'))
    spawner = RefusingSpawner("victim")
    # Its set-aside period outlasts the run: it is owed nothing from its first set-aside on.
    policy = RestartPolicy(backoff_s=0.01, set_aside_s=600.0)
    findings = tmp_path / "findings.jsonl"

    async def scenario() -> Supervisor:
        sup = Supervisor(
            # A small backlog: without the set-aside, the victim fills it within 512 events
            # and the source waits for ever.
            HostConfig(batch_size=32, backlog_batches=16, state_dir=tmp_path / "state"),
            [Manifest.load(TEST_PLUGINS / "tally" / "plugin.toml"), Manifest.load(toml)],
            JsonLinesSink(findings, None),
            restart_policy=policy,
            spawner=spawner,
        )
        await sup.start()
        async with asyncio.timeout(120):  # a wedged source fails here, not the whole run
            for i in range(EVENTS):
                await sup.publish(exec_event("/usr/bin/id", pid=i + 1))
            await sup.stop()
        return sup

    sup = asyncio.run(scenario())
    tally, victim_runner = sup.plugins["tally"], sup.plugins["victim"]
    assert tally.stats.processed == EVENTS
    assert tally.stats.restarts == {}
    assert victim_runner.phase is Phase.SET_ASIDE
    assert "could not be started 5 times in a row" in victim_runner.reason
    assert "Too many open files" in victim_runner.reason
    assert spawner.refusals == policy.start_attempts
    # Every event it was owed is accounted for: none processed, all undelivered.
    assert victim_runner.stats.processed == 0
    assert victim_runner.stats.undelivered == EVENTS
    (count,) = [f for f in read_findings(findings) if f.plugin == "tally"]
    assert count.attributes["events"] == str(EVENTS)
    # Set aside for a condition of the machine, not quarantined: nothing is persisted.
    assert StateStore(tmp_path / "state").quarantined() == {}
