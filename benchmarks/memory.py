"""Memory: what each worker costs (USS and PSS), and the host's RSS, with 1, 4 and 16 plugins."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from agent_host import logs
from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.supervisor import Supervisor
from benchmarks.common import make_events, median, trivial

MIB = 1024 * 1024


async def _run(n: int, workdir: Path) -> dict[str, float]:
    sup = Supervisor(
        HostConfig(state_dir=None), trivial(n, workdir), JsonLinesSink(None, terminal=None)
    )
    await sup.start()
    for event in make_events(2000):  # warm: every worker has parsed and processed batches
        await sup.publish(event)
    await sup.drain()
    uss, pss = [], []
    for handle in sup.plugins.values():
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
    """Measured in a fresh process: the benchmark's own holds events and in-process plugins."""
    code = (
        "import json, sys; from benchmarks.memory import measure_here; "
        "print(json.dumps(measure_here(int(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(n)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure_here(n: int) -> dict[str, float]:
    logs.configure("console", "critical")
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_run(n, Path(tmp)))
