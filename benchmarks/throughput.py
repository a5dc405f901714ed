"""Throughput: the same plugins over the same recording, in-process and isolated, side by side.

The in-process baseline reads the same recording with the same parser, numbers and batches the
events the same way, and calls each plugin's on_event directly in one interpreter, as a host
that loads plugins into its own address space would. The isolated run is agent-host's host with
one worker per plugin (worker start-up excluded: it is paid once per run). Each is timed from
the first line read to the last event processed by every plugin.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.manifest import Manifest
from agent_host.protocol import Event
from agent_host.sources.replay import ReplaySource
from benchmarks import inprocess


class _MemorySource:
    """Events already parsed, to time the pipeline without the recording's JSON."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for n, event in enumerate(self.events):
            copy = Event()
            copy.CopyFrom(event)
            yield copy
            if n % 256 == 0:
                await asyncio.sleep(0)


async def _isolated(
    source: object, manifests: list[Manifest], batch_size: int
) -> tuple[int, float]:
    from agent_host.host.supervisor import Supervisor

    sup = Supervisor(
        HostConfig(batch_size=batch_size, state_dir=None),
        manifests,
        JsonLinesSink(None, terminal=None),
    )
    await sup.start()
    started = time.perf_counter()
    await sup.publish_all(aiter(source))  # type: ignore[call-overload]
    await sup.drain()
    elapsed = time.perf_counter() - started
    await sup.stop()
    return sup.accepted, elapsed


async def _baseline(
    source: object, manifests: list[Manifest], batch_size: int
) -> tuple[int, float]:
    plugins = inprocess.load_all(manifests)  # not timed, as the workers' start-up is not
    started = time.perf_counter()
    events, _ = await inprocess.run(source, plugins, batch_size)  # type: ignore[arg-type]
    return events, time.perf_counter() - started


def measure(
    recording: Path,
    manifests: list[Manifest],
    *,
    parsed: list[Event] | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Events per second in-process and isolated, measured back to back, and their ratio."""

    def source() -> object:
        return _MemorySource(parsed) if parsed is not None else ReplaySource(recording)

    n_in, t_in = asyncio.run(_baseline(source(), manifests, batch_size))
    n_iso, t_iso = asyncio.run(_isolated(source(), manifests, batch_size))
    if n_in != n_iso:
        raise RuntimeError(f"in-process saw {n_in} events, isolated {n_iso}")
    eps_in, eps_iso = n_in / t_in, n_iso / t_iso
    return {
        "events": n_in,
        "in_process_eps": eps_in,
        "isolated_eps": eps_iso,
        "ratio": eps_iso / eps_in,
    }
