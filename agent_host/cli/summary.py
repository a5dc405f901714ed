"""The end-of-run report: one row per plugin with its exact accounting."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent_host.host.runner import PluginRunner

_COLUMNS = (
    "plugin",
    "version",
    "state",
    "delivered",
    "processed",
    "redelivered",
    "dead_lettered",
    "undelivered",
    "errors",
    "findings",
    "restarts",
)


def summary_rows(runners: Iterable[PluginRunner]) -> list[dict[str, Any]]:
    """Per plugin: every counter, restarts by cause, state and the reason for it."""
    rows: list[dict[str, Any]] = []
    for h in runners:
        s = h.stats
        rows.append(
            {
                "plugin": h.name,
                "version": h.manifest.version,
                "state": h.phase.value,
                "delivered": s.delivered,
                "processed": s.processed,
                "redelivered": s.redelivered,
                "dead_lettered": s.dead_lettered,
                "undelivered": s.undelivered,
                "handed_over": s.handed_over,
                "errors": s.errors,
                "findings": s.findings,
                "rejected_findings": s.rejected_findings,
                "suppressed_findings": s.suppressed_findings,
                "state_errors": s.state_errors,
                "dead_letters_unkept": s.dead_letters_unkept,
                "restarts": dict(sorted(s.restarts.items())),
                "measurement": h.content.measurement,
                "signer": h.signer,
                "peak_rss_mib": round(s.peak_rss_mib, 1),
                "reason": h.retired or h.reason,
            }
        )
    return rows


def _cell(row: dict[str, Any], column: str) -> str:
    value = row[column]
    if column == "restarts":
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "0"
    return str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table that reads well in a terminal and in a CI log."""
    cells = [{c: _cell(r, c) for c in _COLUMNS} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in cells)]) for c in _COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in _COLUMNS)]
    lines.append("  ".join("-" * widths[c] for c in _COLUMNS))
    for row, cell in zip(rows, cells, strict=True):
        lines.append("  ".join(cell[c].ljust(widths[c]) for c in _COLUMNS))
        if row["reason"] and row["state"] != "running":
            lines.append(f"    {row['plugin']}: {row['reason']}")
    return "\n".join(lines)
