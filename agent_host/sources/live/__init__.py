"""Live sensors of this machine (processes, files, network) and the hub that supervises them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from agent_host.sources.live.base import Sensor
from agent_host.sources.live.file_changes import DEFAULT_PATHS
from agent_host.sources.live.hub import OverflowPolicy, SensorHub

if TYPE_CHECKING:
    from agent_host.sources.live.execs import ExecTable

__all__ = ["DEFAULT_PATHS", "OverflowPolicy", "Sensor", "SensorHub", "build_hub", "file_sensor"]

log = structlog.get_logger("agent_host")


def build_hub(
    sensors: list[str],
    *,
    watch: list[str],
    exclude: list[str],
    poll_interval_s: float = 0.5,
    capacity: int = 65_536,
    policy: OverflowPolicy = OverflowPolicy.BLOCK,
) -> SensorHub:
    """A hub with the named sensors ("process", "file", "network").

    Process and network events come from the kernel's audit records of the system calls
    where this host may use them (root), else from the process events connector and polling
    of the socket table; file events from fanotify as root, else inotify. The log says which,
    and why.
    """
    from agent_host.sources.live.execs import ExecTable
    from agent_host.sources.live.network import NetworkSensor
    from agent_host.sources.live.process import process_sensor
    from agent_host.sources.live.syscalls import syscall_sensor

    unknown = [n for n in sensors if n not in ("process", "file", "network")]
    if unknown:
        raise ValueError(f"unknown sensor {unknown[0]!r}; known: process, file, network")
    built: list[Sensor] = []
    execs = ExecTable()
    audited = syscall_sensor(
        process="process" in sensors, network="network" in sensors, execs=execs
    )
    if audited is not None:
        built.append(audited)
    for name in sensors:
        if name == "process" and not (audited and audited.process):
            built.append(process_sensor(poll_interval_s))
        elif name == "file":
            built.append(file_sensor(watch, exclude, execs=execs))
        elif name == "network" and not (audited and audited.network):
            built.append(NetworkSensor(poll_interval_s))
    return SensorHub(built, capacity, policy)


def file_sensor(
    paths: Sequence[str] = DEFAULT_PATHS,
    exclude: Sequence[str] = (),
    coalesce_s: float = 1.0,
    execs: ExecTable | None = None,
) -> Sensor:
    """fanotify where this process may use it (root), else inotify; logged either way.
    ``execs`` names writers that have exited by the time their change is read."""
    from agent_host.sources.live.fanotify_sensor import FanotifySensor, fanotify_unavailable
    from agent_host.sources.live.inotify_sensor import InotifySensor

    why = fanotify_unavailable()
    if why is None:
        return FanotifySensor(paths, exclude, coalesce_s, execs)
    log.warning(
        "file sensor: fanotify unavailable, using inotify (changes only, without the pid, "
        "uid or executable that made them)",
        reason=why,
    )
    return InotifySensor(paths, exclude, coalesce_s)
