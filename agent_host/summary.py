"""The end-of-run report: one row per plugin with its exact accounting."""

from __future__ import annotations

from collections.abc import Iterable

from agent_host.handle import WorkerHandle

_COLUMNS = (
    "plugin",
    "version",
    "state",
    "delivered",
    "processed",
    "redelivered",
    "undelivered",
    "errors",
    "findings",
    "restarts",
)


def summary_rows(handles: Iterable[WorkerHandle]) -> list[dict[str, str | int]]:
    rows: list[dict[str, str | int]] = []
    for h in handles:
        s = h.stats
        restarts = ", ".join(f"{k}={v}" for k, v in sorted(s.restarts.items())) or "0"
        rows.append(
            {
                "plugin": h.name,
                "version": h.manifest.version,
                "state": h.state.value,
                "delivered": s.delivered,
                "processed": s.processed,
                "redelivered": s.redelivered,
                "undelivered": s.undelivered,
                "errors": s.errors,
                "findings": s.findings,
                "restarts": restarts,
                "reason": h.reason,
            }
        )
    return rows


def render_table(rows: list[dict[str, str | int]]) -> str:
    """A plain-text table that reads well in a terminal and in a CI log."""
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in _COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in _COLUMNS)]
    lines.append("  ".join("-" * widths[c] for c in _COLUMNS))
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(widths[c]) for c in _COLUMNS))
        if r["reason"] and r["state"] != "running":
            lines.append(f"    {r['plugin']}: {r['reason']}")
    return "\n".join(lines)
