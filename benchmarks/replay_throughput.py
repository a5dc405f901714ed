"""Replay throughput: N events through the same plugins, in-process and isolated, in one run.

    python -m benchmarks.replay_throughput [--events 100000] [--plugin noop ...]

Writes a synthetic recording, then times (a) the in-process baseline and (b) agent-host's
supervisor with one worker per plugin (worker start-up excluded: it is paid once per run), each
from the first event read to the last finding written. Reports events per second and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from agent_host import logs
from agent_host.config import HostConfig
from agent_host.findings import FindingSink
from agent_host.manifest import Manifest
from agent_host.sensors.replay import ReplaySource, write_recording
from agent_host.sensors.synthetic import SyntheticSource
from agent_host.supervisor import Supervisor
from benchmarks import inprocess

HERE = Path(__file__).parent


def manifests_named(names: list[str]) -> list[Manifest]:
    """Benchmark plugins from benchmarks/plugins/NAME, or any plugin folder given as a path."""
    return [
        Manifest.load((HERE / "plugins" / n if "/" not in n else Path(n)) / "plugin.toml")
        for n in names
    ]


async def isolated(
    recording: Path, manifests: list[Manifest], batch_size: int
) -> tuple[int, float]:
    sink = FindingSink(None, terminal=None)
    sup = Supervisor(HostConfig(batch_size=batch_size), manifests, sink)
    await sup.start()
    started = time.perf_counter()
    await sup.publish_all(aiter(ReplaySource(recording)))
    await sup.drain()
    elapsed = time.perf_counter() - started
    await sup.stop()
    return sup.accepted, elapsed


async def baseline(
    recording: Path, manifests: list[Manifest], batch_size: int
) -> tuple[int, float]:
    started = time.perf_counter()
    events, _ = await inprocess.run(ReplaySource(recording), manifests, batch_size)
    return events, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--plugin",
        action="append",
        dest="plugins",
        metavar="NAME",
        help="a plugin of benchmarks/plugins, or a plugin folder (default: noop)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    manifests = manifests_named(args.plugins or ["noop"])
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "events.jsonl"
        source = SyntheticSource(rate=0)
        write_recording(recording, [source.make(n) for n in range(1, args.events + 1)])
        n_in, t_in = asyncio.run(baseline(recording, manifests, args.batch_size))
        n_iso, t_iso = asyncio.run(isolated(recording, manifests, args.batch_size))
    assert n_in == n_iso == args.events, (n_in, n_iso)
    eps_in, eps_iso = n_in / t_in, n_iso / t_iso
    print(f"events: {args.events}  plugins: {', '.join(m.name for m in manifests)}")
    print(f"in-process: {eps_in:>10,.0f} events/s  ({t_in:.2f}s)")
    print(f"isolated:   {eps_iso:>10,.0f} events/s  ({t_iso:.2f}s)")
    print(f"ratio isolated / in-process: {eps_iso / eps_in:.2f}")


if __name__ == "__main__":
    main()
