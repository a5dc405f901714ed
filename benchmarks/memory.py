"""Memory: what each worker costs (USS and PSS), and the host's RSS, with 1, 4 and 16 plugins."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import psutil

from agent_host.config import HostConfig
from agent_host.findings import FindingSink
from agent_host.supervisor import Supervisor
from benchmarks.common import make_events, median, trivial

MIB = 1024 * 1024


async def _run(n: int, workdir: Path) -> dict[str, float]:
    sup = Supervisor(
        HostConfig(state_dir=None), trivial(n, workdir), FindingSink(None, terminal=None)
    )
    await sup.start()
    for event in make_events(2000):  # warm: every worker has parsed and processed batches
        await sup.publish(event)
    await sup.drain()
    uss, pss = [], []
    for handle in sup.handles.values():
        assert handle.pid is not None
        info = psutil.Process(handle.pid).memory_full_info()
        uss.append(info.uss / MIB)
        pss.append(info.pss / MIB)
    host_rss = psutil.Process().memory_info().rss / MIB
    await sup.stop()
    return {
        "plugins": n,
        "worker_uss_mb": median(uss),
        "worker_pss_mb": median(pss),
        "host_rss_mb": host_rss,
    }


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_run(n, Path(tmp)))
