"""The in-process baseline: the same plugins called directly in one interpreter.

Same source, same event objects, same batching as the host, and no isolation: this is what a host
that loads plugins into its own address space (as Falco does) would pay.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import AsyncIterable

from agent_host import sdk
from agent_host.manifest import Manifest
from agent_host.protocol import Event, event_kind


def load(manifest: Manifest) -> sdk.Plugin:
    """Import a plugin into this process (only a benchmark may do this; the host never does)."""
    sys.path.insert(0, str(manifest.directory))
    module_name, class_name = manifest.entrypoint.split(":", 1)
    plugin: sdk.Plugin = getattr(importlib.import_module(module_name), class_name)()
    plugin.config = json.loads(manifest.config_json)
    plugin.on_start(plugin.config)
    return plugin


async def run(
    source: AsyncIterable[Event], manifests: list[Manifest], batch_size: int = 256
) -> tuple[int, int]:
    """Feed ``source`` to the plugins in batches; return (events, findings)."""
    plugins = [(load(m), m.subscribe) for m in manifests]
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
