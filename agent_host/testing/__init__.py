"""Helpers for plugin authors' tests: run a plugin in a real sandboxed worker.

    from agent_host.testing import run_plugin

    def test_detects_exec_from_tmp():
        run = run_plugin("plugins/suspicious_exec", [exec_event("/tmp/x")])
        assert run.rules() == ["exec_from_writable_dir"]

The plugin runs exactly as in production: its own worker process, the real gRPC session, its
limits; a crash or a hang is contained, restarted and isolated as the host would, and shows in
the result (``state``, ``stats``, ``dead_letters``). Events are numbered 1, 2, 3... in the order
given, so ``Finding.event_ids`` are positions in that list, counting from 1.

With pytest, the ``agent_host_plugin`` fixture is this function.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.manifest import MANIFEST_NAME, Manifest
from agent_host.host.stats import PluginStats
from agent_host.host.store import DeadLetter
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event, FileEvent, Finding, NetworkEvent, ProcessEvent
from agent_host.sources.replay import ReplaySource

__all__ = ["PluginRun", "connect_event", "exec_event", "file_event", "run_plugin"]


@dataclass(frozen=True)
class PluginRun:
    """What a plugin did with the events it was given."""

    findings: list[Finding]
    stats: PluginStats
    state: str
    reason: str
    dead_letters: list[DeadLetter]

    def rules(self) -> list[str]:
        """The rule of each finding, in the order they were reported."""
        return [f.rule for f in self.findings]

    def for_event(self, position: int) -> list[Finding]:
        """The findings about the event at ``position`` (counting from 1)."""
        return [f for f in self.findings if position in f.event_ids]


def _manifest(plugin: Path, config: Mapping[str, Any] | None, read: Iterable[str]) -> Manifest:
    manifest = Manifest.load(plugin / MANIFEST_NAME if plugin.is_dir() else plugin)
    if config:
        manifest = dataclasses.replace(manifest, config={**manifest.config, **config})
    if read:
        grants = manifest.permissions
        grants = dataclasses.replace(grants, read=(*grants.read, *map(str, read)))
        manifest = dataclasses.replace(manifest, permissions=grants)
    return manifest


async def _run(manifest: Manifest, events: Iterable[Event] | Path, batch_size: int) -> PluginRun:
    sink = CollectingSink()
    sup = Supervisor(HostConfig(batch_size=batch_size, state_dir=None), [manifest], sink)
    await sup.start()
    try:
        if isinstance(events, Path):
            await sup.publish_all(aiter(ReplaySource(events)))
        else:
            for event in events:
                copy = Event()
                copy.CopyFrom(event)
                await sup.publish(copy)
        await sup.drain()
        letters = sup.store.dead_letters()
    finally:
        await sup.stop()
    runner = sup.plugins[manifest.name]
    return PluginRun(sink.findings, runner.stats, runner.phase.value, runner.reason, letters)


def run_plugin(
    plugin: str | Path,
    events: Iterable[Event] | str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    read: Iterable[str | Path] = (),
    batch_size: int = 256,
) -> PluginRun:
    """Run the plugin in ``plugin`` (its folder or manifest) over ``events`` and collect.

    Args:
        plugin: The plugin's folder (or its plugin.toml).
        events: Events, or the path of a recording (JSON Lines).
        config: Values that replace those of the manifest's [config] table.
        read: Paths the plugin may read besides those of its manifest's [permissions] (its
            worker is sandboxed: rules in a folder of the test's, say).
        batch_size: Events per batch, as the host's --batch-size.
    """
    manifest = _manifest(Path(plugin), config, [str(p) for p in read])
    source = Path(events) if isinstance(events, str | Path) else events
    return asyncio.run(_run(manifest, source, batch_size))


def exec_event(
    exe: str,
    *args: str,
    parent: str = "/usr/bin/bash",
    user: str = "user",
    cwd: str = "/home/user",
    pid: int = 4242,
) -> Event:
    """A process START event for ``exe`` run with ``args``."""
    return Event(
        process=ProcessEvent(
            action=ProcessEvent.START,
            pid=pid,
            ppid=pid - 1,
            exe=exe,
            cmdline=[exe, *args],
            cwd=cwd,
            user=user,
            parent_exe=parent,
            parent_cmdline=[parent],
        )
    )


def file_event(path: str, action: str = "CREATED", dest_path: str = "", pid: int = 0) -> Event:
    """A file event; ``action`` is CREATED, MODIFIED, DELETED or MOVED."""
    return Event(
        file=FileEvent(
            action=FileEvent.Action.Value(action), path=path, dest_path=dest_path, pid=pid
        )
    )


def connect_event(
    remote_address: str,
    remote_port: int,
    exe: str = "/usr/bin/curl",
    hostname: str = "",
    pid: int = 4242,
) -> Event:
    """An outbound connection from ``exe``."""
    return Event(
        network=NetworkEvent(
            action=NetworkEvent.CONNECT,
            pid=pid,
            exe=exe,
            protocol="tcp",
            local_address="10.0.0.5",
            local_port=50000,
            remote_address=remote_address,
            remote_port=remote_port,
            remote_hostname=hostname,
        )
    )
