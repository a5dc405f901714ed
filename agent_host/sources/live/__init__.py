"""Live sensors of this machine (processes, files, network) and the hub that supervises them."""

from __future__ import annotations

from agent_host.sources.live.base import Sensor
from agent_host.sources.live.hub import OverflowPolicy, SensorHub

__all__ = ["OverflowPolicy", "Sensor", "SensorHub", "build_hub"]


def build_hub(
    sensors: list[str],
    *,
    watch: list[str],
    exclude: list[str],
    poll_interval_s: float = 0.5,
    capacity: int = 65_536,
    policy: OverflowPolicy = OverflowPolicy.BLOCK,
) -> SensorHub:
    """A hub with the named sensors ("process", "file", "network")."""
    from agent_host.sources.live.file import FileSensor
    from agent_host.sources.live.network import NetworkSensor
    from agent_host.sources.live.process import process_sensor

    built: list[Sensor] = []
    for name in sensors:
        if name == "process":
            built.append(process_sensor(poll_interval_s))
        elif name == "file":
            built.append(FileSensor(watch, exclude))
        elif name == "network":
            built.append(NetworkSensor(poll_interval_s))
        else:
            raise ValueError(f"unknown sensor {name!r}; known: process, file, network")
    return SensorHub(built, capacity, policy)
