"""Per-plugin accounting: every event a plugin was owed ends in exactly one of these counters."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

#: Upper bounds (seconds) of the batch latency buckets, as Prometheus histograms have them.
LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(slots=True)
class LatencyHistogram:
    """How long batches took from being framed to being answered: counts per bucket, bounded
    by construction (one counter per bucket, one for what is past the last)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds


@dataclass(slots=True)
class PluginStats:
    """Counters of one plugin. An event owed to the plugin is, in the end, exactly one of
    processed, dead_lettered, undelivered or handed_over; ``delivered`` and
    ``redelivered`` count sends.
    """

    delivered: int = 0
    processed: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
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
    #: Findings an operator's suppression (or the allowlist) kept out.
    suppressed_findings: int = 0
    #: Writes of this plugin's state (quarantine, dead letters) that failed: the host's fault.
    state_errors: int = 0
    #: Of the dead letters, those the state folder could not keep.
    dead_letters_unkept: int = 0
    restarts: Counter[str] = field(default_factory=Counter)
    peak_rss_mib: float = 0.0
    #: From a batch's framing to its answer (queueing in the backlog included).
    batch_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
