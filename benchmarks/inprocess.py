"""The in-process baseline: the same plugins called directly in one interpreter.

Same source, same event objects, same batching as the host, and no isolation: this is what a host
that loads plugins into its own address space (as Falco does) would pay.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import AsyncIterable

from agent_host import sdk
from agent_host.host.manifest import Manifest
from agent_host.protocol import Event, event_kind


def load(manifest: Manifest) -> sdk.Plugin:
    """Import a plugin into this process (only a benchmark may do this; the host never does).

    Several plugins' modules share names (detector.py), so each is loaded from its own file
    under a name of its own.
    """
    sys.path.insert(0, str(manifest.directory))
    module_name, class_name = manifest.entrypoint.split(":", 1)
    path = manifest.directory / f"{module_name.replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(f"_inprocess_{manifest.name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin: sdk.Plugin = getattr(module, class_name)()
    plugin.config = json.loads(manifest.config_json)
    plugin.log = logging.getLogger(f"plugin.{manifest.name}")
    plugin.on_start(plugin.config)
    return plugin


Loaded = list[tuple[sdk.Plugin, frozenset[str]]]


def load_all(manifests: list[Manifest]) -> Loaded:
    """Import and start every plugin (not timed: the isolated run's start-up is not either)."""
    return [(load(m), frozenset(m.subscribe)) for m in manifests]


async def run(
    source: AsyncIterable[Event], plugins: Loaded, batch_size: int = 256
) -> tuple[int, int]:
    """Feed ``source`` to the loaded plugins in batches; return (events, findings)."""
    batch: list[Event] = []
    events = findings = 0

    def flush() -> int:
        found = 0
        for plugin, kinds in plugins:
            for event in batch:
                if event_kind(event) in kinds:
                    produced = plugin.on_event(event)
                    if produced is not None:
                        found += sum(1 for _ in produced)
        batch.clear()
        return found

    async for event in source:
        events += 1
        event.seq = events
        batch.append(event)
        if len(batch) >= batch_size:
            findings += flush()
    findings += flush()
    for plugin, _ in plugins:
        plugin.on_stop()
    return events, findings
