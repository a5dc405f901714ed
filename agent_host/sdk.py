"""The plugin authors' API: subclass ``Plugin``, yield ``Finding``s.

A plugin is a folder with a ``plugin.toml`` and a module whose class derives from Plugin::

    from agent_host.sdk import Event, Finding, Plugin, Severity

    class SuspiciousExec(Plugin):
        def on_event(self, event: Event) -> Iterator[Finding]:
            if event.process.exe.startswith("/tmp/"):
                yield Finding(rule="exec_from_tmp", severity=Severity.HIGH,
                              message=f"executed from /tmp: {event.process.exe}")

Events are the protobuf messages of ``protos/agent_host/protocol/v1/event.proto`` (read them; do
not keep references to them after on_event returns). The plugin runs in its own sandboxed worker
process: whatever it does, it cannot harm the host or the other plugins.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_host.protocol import Event

__all__ = ["Event", "Finding", "Plugin", "Severity"]


class Severity(enum.IntEnum):
    """How urgent a finding is; the values are those of ``Finding.Severity`` in the protocol."""

    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


@dataclass(frozen=True, slots=True)
class Finding:
    """One detection.

    Args:
        rule: A stable identifier of the rule that fired, e.g. ``"exec_from_tmp"``.
        severity: How urgent it is.
        message: One human-readable line.
        event_ids: ``Event.seq`` of the events it is about; defaults to the event being handled.
            Every id must be of an event this plugin was given, or the host rejects the finding.
        attributes: Extra string key/values for the analyst.
        techniques: MITRE ATT&CK technique ids, e.g. ``("T1059.004",)``.
    """

    rule: str
    severity: Severity
    message: str
    event_ids: tuple[int, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    techniques: tuple[str, ...] = ()


class Plugin:
    """Base class of every detection plugin. Override the ``on_*`` hooks you need.

    The worker calls, in order: ``on_start(config)`` once, ``on_event(event)`` for each event of
    the kinds the manifest subscribes to, and ``on_stop()`` once at shutdown. Findings may be
    returned (or yielded) from on_event and on_stop. An exception in on_event is logged and
    counted; the event counts as processed with an error, and the plugin keeps running.
    """

    #: The ``[config]`` table of the manifest, set before on_start is called.
    config: Mapping[str, Any]
    #: A logger whose records reach the host's log, tagged with the plugin's name and pid.
    log: logging.Logger

    def on_start(self, config: Mapping[str, Any]) -> None:
        """Prepare (compile rules, open files). Raising here fails the plugin's start."""

    def on_event(self, event: Event) -> Iterable[Finding] | None:
        """Inspect one event; return or yield findings, or return None."""
        return None

    def on_stop(self) -> Iterable[Finding] | None:
        """Release resources; may report findings for state held until now."""
        return None
