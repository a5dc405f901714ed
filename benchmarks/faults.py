"""Fault-handling latencies: restart after a kill, and hang detection past the deadline.

    python -m benchmarks.faults [--kills 20] [--hangs 10] [--burner 20000]

Restart latency: SIGKILL the worker of a plugin that answers every event, publish an event at
once, and time from the kill until that event's finding is written: death detected, a new
worker started and connected, and the event redelivered to it and processed.

Hang detection: a plugin with a 0.5 s deadline sleeps on chosen events; time from the moment
its batch was sent until the worker has exited, less the deadline: the overshoot.

Beside a burner (``--burner EVENTS``): an honest plugin's throughput while another holds its
first batch with four processes spinning, over its throughput alone. The burner's cpu cgroup
(``cpu_cores``, one core by default) is what keeps the host and the honest plugin theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent_host import logs
from agent_host.host.config import HostConfig
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event, Finding, ProcessEvent
from benchmarks.common import make_events, trivial

HERE = Path(__file__).parent
#: Every restart is the first after a stable run, so none waits for backoff; none quarantines.
EAGER = RestartPolicy(stable_after_s=0.2, burst=1_000_000)


class _WatchingSink:
    """A sink that tells a waiter when the finding for a given event arrives."""

    def __init__(self) -> None:
        self.waiters: dict[int, asyncio.Future[float]] = {}

    def write(self, findings: Sequence[Finding]) -> None:
        now = time.perf_counter()
        for f in findings:
            for seq in f.event_ids:
                waiter = self.waiters.pop(seq, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    def close(self) -> None:
        return None


def _event(exe: str) -> Event:
    return Event(process=ProcessEvent(action=ProcessEvent.START, pid=1, exe=exe))


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def restart_latencies(kills: int) -> list[float]:
    """Seconds from SIGKILL to the replacement's finding for an event published at the kill."""
    sink = _WatchingSink()
    manifest = Manifest.load(HERE / "plugins" / "echo" / "plugin.toml")
    sup = Supervisor(HostConfig(batch_size=1), [manifest], sink, restart_policy=EAGER)
    await sup.start()
    handle = sup.plugins["echo"]
    latencies: list[float] = []
    for _ in range(kills):
        await _until(lambda: handle.phase is Phase.RUNNING)
        await asyncio.sleep(0.3)  # a stable run: the next restart is not backed off
        pid = handle.pid
        assert pid is not None
        started = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        sink.waiters[sup.accepted + 1] = waiter
        await sup.publish(_event("/usr/bin/true"))
        latencies.append(await asyncio.wait_for(waiter, 30) - started)
    await sup.stop()
    return latencies


async def hang_overshoots(hangs: int) -> tuple[float, list[float]]:
    """(deadline, seconds past it until the hung worker had exited) for each hang."""
    manifest = Manifest.load(HERE / "plugins" / "hang" / "plugin.toml")
    sup = Supervisor(HostConfig(batch_size=1), [manifest], _WatchingSink(), restart_policy=EAGER)
    await sup.start()
    handle = sup.plugins["hang"]
    deadline = manifest.limits.batch_deadline_s
    overshoots: list[float] = []
    for _ in range(hangs):
        await _until(lambda: handle.phase is Phase.RUNNING and not handle.inflight)
        assert handle.worker is not None
        proc = handle.worker.child.process
        started = time.perf_counter()
        await sup.publish(_event("/opt/HANG"))
        await proc.wait()
        overshoots.append(time.perf_counter() - started - deadline)
        # The poison event is redelivered and dead-lettered; let that run its course.
        await _until(lambda: handle.stats.dead_lettered + handle.stats.processed >= sup.accepted)
    await sup.stop()
    return deadline, overshoots


async def _healthy_throughput(
    events: list[Event], beside: str | None, workdir: Path, healthy: int
) -> float:
    """Events per second through ``healthy`` plugins, with another (``beside``, one of
    benchmarks/plugins/) or without."""
    manifests = trivial(healthy, workdir)
    if beside is not None:
        manifests.append(Manifest.load(HERE / "plugins" / beside / "plugin.toml"))
    # The default restart policy: what a user gets.
    sup = Supervisor(HostConfig(state_dir=None), manifests, _WatchingSink())
    await sup.start()
    runners = [sup.plugins[m.name] for m in manifests if m.name != beside]
    # One event first, so that the other plugin is at it (spinning, crash-looping) when the
    # clock starts, and the healthy ones have started.
    await sup.publish(_event("/usr/bin/true"))
    await _until(lambda: all(r.stats.processed == 1 for r in runners))
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    for event in events:
        copy = Event()
        copy.CopyFrom(event)
        await sup.publish(copy)
    await _until(lambda: all(r.stats.processed == len(events) + 1 for r in runners), timeout=120)
    elapsed = time.perf_counter() - started
    await sup.stop()
    return len(events) / elapsed


def containment_ratio(
    n: int, beside: str = "crashloop", healthy: int = 2, rounds: int = 1
) -> dict[str, float]:
    """Healthy plugins' throughput while another misbehaves (crash-loops, or burns cores while
    it holds a batch: ``beside``), over their throughput without: the medians of ``rounds``
    runs of each, taken in turn, so that a slow spell of the machine falls on both."""
    events = make_events(n)
    alone_runs, disturbed_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            alone_runs.append(asyncio.run(_healthy_throughput(events, None, Path(tmp), healthy)))
            disturbed_runs.append(
                asyncio.run(_healthy_throughput(events, beside, Path(tmp), healthy))
            )
    alone, disturbed = statistics.median(alone_runs), statistics.median(disturbed_runs)
    return {
        "healthy_eps_alone": alone,
        f"healthy_eps_beside_{beside}": disturbed,
        "containment_ratio": disturbed / alone,
    }


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--hangs", type=int, default=10)
    parser.add_argument(
        "--burner",
        type=int,
        default=0,
        metavar="EVENTS",
        help="also: an honest plugin's throughput over EVENTS events beside a plugin that burns "
        "cores while it holds a batch, over its throughput alone",
    )
    args = parser.parse_args()
    logs.configure("console", "critical")
    print(
        "restart latency, kill -> replacement's finding:",
        summary(asyncio.run(restart_latencies(args.kills))),
    )
    deadline, overshoots = asyncio.run(hang_overshoots(args.hangs))
    print(f"hang detection, worker gone after deadline ({deadline:g}s) + {summary(overshoots)}")
    if args.burner:
        burner = containment_ratio(args.burner, "burner", healthy=1, rounds=5)
        print(
            f"beside a core burner: {burner['containment_ratio']:.2f} of healthy throughput alone "
            f"({burner['healthy_eps_beside_burner']:,.0f} vs "
            f"{burner['healthy_eps_alone']:,.0f} events/s)"
        )


if __name__ == "__main__":
    main()
