"""What every plugin runner of one host shares: its settings, where its workers come from,
and where its findings and records go. The supervisor makes one for each runner it makes (a
reload may have changed the settings since the last)."""

from __future__ import annotations

from dataclasses import dataclass

from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig
from agent_host.host.findings import FindingPipeline
from agent_host.host.restart import RestartPolicy
from agent_host.host.spawn import Spawner
from agent_host.host.store import StateStore


@dataclass(frozen=True, slots=True)
class Facilities:
    """What every runner of one host shares: its settings, and where workers come from and
    findings and records go."""

    config: HostConfig
    pipeline: FindingPipeline
    restart_policy: RestartPolicy
    store: StateStore
    spawner: Spawner
    cgroups: Cgroups | None = None
