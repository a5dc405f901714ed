"""Per-plugin accounting: every event a plugin was owed ends in exactly one of these counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class PluginStats:
    """Counters of one plugin. An event owed to the plugin is, in the end, exactly one of
    processed, dead_lettered, dropped, undelivered or handed_over; ``delivered`` and
    ``redelivered`` count sends.
    """

    delivered: int = 0
    processed: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    #: Owed but never sent, with the reason in the plugin's state (failed, quarantined, died).
    undelivered: int = 0
    #: Owed, and passed to another version of the plugin that processes them instead (its last
    #: known good, when this version was quarantined).
    handed_over: int = 0
    #: Processed events on which on_event raised (the plugin survived them).
    errors: int = 0
    findings: int = 0
    duplicate_findings: int = 0
    rejected_findings: int = 0
    #: Writes of this plugin's state (quarantine, dead letters) that failed: the host's fault.
    state_errors: int = 0
    restarts: Counter[str] = field(default_factory=Counter)
    peak_rss_mib: float = 0.0
