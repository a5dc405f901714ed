"""Soak: a worker killed at random 1,000 times during a stream of events (slow; -m slow).

Every event must be processed by the healthy plugin, and either processed or dead-lettered by
the one being killed: random kills may get an innocent event dead-lettered (it was in flight at
every kill that isolation charged to it), but never lost.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
from pathlib import Path

import pytest

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.store import StateStore
from agent_host.host.supervisor import Supervisor
from tests.helpers import TEST_PLUGINS, exec_event, read_findings

KILLS = int(os.environ.get("SOAK_KILLS", "1000"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_random_kills_lose_nothing(tmp_path: Path) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    shutil.copy(TEST_PLUGINS / "faulty" / "faulty.py", victim_dir / "faulty.py")
    (victim_dir / "plugin.toml").write_text(
        '[plugin]\nname = "victim"\nversion = "1"\nentrypoint = "faulty:Faulty"\n'
        'subscribe = ["process"]\n[config]\nfault = "raise"\n'
    )
    findings_path = tmp_path / "findings.jsonl"
    rng = random.Random(7)

    async def scenario() -> Supervisor:
        sup = Supervisor(
            HostConfig(batch_size=32, state_dir=tmp_path / "state"),
            [
                Manifest.load(TEST_PLUGINS / "tally" / "plugin.toml"),
                Manifest.load(victim_dir / "plugin.toml"),
            ],
            JsonLinesSink(findings_path, None),
            restart_policy=RestartPolicy(backoff_s=0.0, burst=10**9),
        )
        await sup.start()
        victim = sup.plugins["victim"]
        kills = 0

        async def killer() -> None:
            nonlocal kills
            last = None
            while kills < KILLS:
                await asyncio.sleep(rng.uniform(0.0, 0.05))
                if victim.phase is Phase.RUNNING and victim.pid not in (None, last):
                    last = victim.pid  # each kill is of a new worker
                    os.kill(last, signal.SIGKILL)
                    kills += 1

        task = asyncio.create_task(killer())
        n = 0
        while not task.done():
            n += 1
            await sup.publish(exec_event(f"/usr/bin/p{n}", pid=n))
            if n % 50 == 0:
                await asyncio.sleep(0.001)
        await sup.stop()
        sup.findings.close()
        return sup

    sup = asyncio.run(scenario())
    total = sup.accepted
    findings = read_findings(findings_path)
    tally = next(f for f in findings if f.plugin == "tally")
    assert tally.attributes["events"] == tally.attributes["distinct"] == str(total)

    victim = sup.plugins["victim"]
    store = StateStore(tmp_path / "state")
    dead = {d.seq for d in store.dead_letters("victim")}
    store.close()
    seen = [f.event_ids[0] for f in findings if f.plugin == "victim"]
    assert len(seen) == len(set(seen)), "a redelivered event repeated a finding"
    assert set(seen) | dead == set(range(1, total + 1))
    assert not set(seen) & dead
    assert victim.stats.processed + victim.stats.dead_lettered == total
    assert sum(victim.stats.restarts.values()) >= KILLS
