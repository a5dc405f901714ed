"""Latency: from an event entering the host to its finding being written, at fixed offered rates.

A paced source publishes pre-built events at the offered rate (in 1 ms slices); the echo plugin
answers every event with a finding; the sink notes, for each finding, how long ago its event was
published. Reported per rate and per batch flush interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from agent_host.host.config import HostConfig
from agent_host.host.manifest import Manifest
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event, Finding
from benchmarks.common import HERE, make_events, percentile


class _LatencySink:
    def __init__(self) -> None:
        self.published: dict[int, float] = {}
        self.latencies: list[float] = []

    def write(self, findings: Sequence[Finding]) -> None:
        now = time.perf_counter()
        for finding in findings:
            sent = self.published.pop(finding.event_ids[0], None)
            if sent is not None:
                self.latencies.append(now - sent)

    def close(self) -> None:
        return None


async def _run(rate: float, seconds: float, flush_s: float) -> dict[str, float]:
    manifest = Manifest.load(HERE / "plugins" / "echo" / "plugin.toml")
    sink = _LatencySink()
    sup = Supervisor(HostConfig(flush_interval_s=flush_s, state_dir=None), [manifest], sink)
    await sup.start()
    total = int(rate * seconds)
    events = make_events(min(total, 20_000))
    started = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            event = Event()
            event.CopyFrom(events[sent % len(events)])
            event.ClearField("time")
            sink.published[sup.accepted + 1] = time.perf_counter()
            await sup.publish(event)
            sent += 1
        await asyncio.sleep(0.001)
    achieved = sent / (time.perf_counter() - started)
    await sup.drain()
    await sup.stop()
    ms = [v * 1000 for v in sink.latencies]
    return {
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
        "achieved_eps": achieved,
        "findings": len(ms),
    }


def measure(rate: float, seconds: float, flush_s: float = 0.005) -> dict[str, float]:
    result = asyncio.run(_run(rate, seconds, flush_s))
    return {"offered_eps": rate, "flush_ms": flush_s * 1000, **result}
