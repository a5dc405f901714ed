"""The end-of-run report: the host's totals, what was lost and where, and one row per plugin
with its exact accounting; and the one line systemd shows while it runs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Any

from agent_host.cli.options import RunOptions
from agent_host.errors import UsageError
from agent_host.host.exports.sender import SpooledOutput
from agent_host.host.findings import JsonLinesSink
from agent_host.host.runner import PluginRunner
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event
from agent_host.sources.live import SensorHub
from agent_host.sources.replay import ReplaySource

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


def status_line(sup: Supervisor) -> str:
    """One line for systemd's STATUS=: plugins by state, events and findings so far."""
    states = Counter(r.phase.value for r in sup.plugins.values())
    plugins = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"plugins: {plugins}; {sup.accepted} events, {sup.findings.written} findings"


def summary_of(
    sup: Supervisor,
    source: AsyncIterable[Event],
    elapsed: float,
    outputs: Sequence[SpooledOutput] = (),
) -> dict[str, object]:
    """The end-of-run summary: the host's totals and every plugin's row."""
    bad_lines = source.bad_lines if isinstance(source, ReplaySource) else 0
    summary: dict[str, object] = {
        "events": sup.accepted,
        "bad_lines": bad_lines,
        "events_without_kind": sup.rejected_events,
        "findings": sup.findings.written,
        "findings_lost": sup.findings.lost,
        "elapsed_s": elapsed,
        "refused_sessions": sup.refused_sessions,
        "plugins": summary_rows(sup.runners),
    }
    for output in outputs:  # "export" (NATS), "webhook", "syslog", "program"
        summary[output.kind] = output.counts()
    if isinstance(source, SensorHub):
        summary["sensors"] = {
            "emitted": dict(source.emitted),
            "dropped": dict(source.dropped),
            "restarts": dict(source.restarts),
        }
    return summary


def report(
    options: RunOptions,
    sup: Supervisor,
    source: AsyncIterable[Event],
    elapsed: float,
    outputs: Sequence[SpooledOutput],
) -> None:
    summary = summary_of(sup, source, elapsed, outputs)
    rows = summary_rows(sup.runners)
    bad_lines = summary["bad_lines"]
    print(
        f"\n{sup.accepted} events in {elapsed:.2f}s ({sup.accepted / elapsed:,.0f}/s), "
        f"{bad_lines} bad lines skipped, {sup.findings.written} findings"
    )
    print(render_table(rows))
    findings = sup.findings
    if findings.lost:
        where = findings.sink.path if isinstance(findings.sink, JsonLinesSink) else None
        print(
            f"{findings.lost} findings LOST: they could not be written to "
            f"{where or 'the findings sink'} ({findings.last_error})"
        )
    for output in outputs:
        if output.spool.dropped:
            print(
                f"{output.spool.dropped} findings DROPPED from the {output.kind} output: its "
                f"spool (--export-spool-mb {options.export_spool_mb}) was full"
            )
        if output.refused:
            print(f"{output.refused} findings REFUSED by the {output.kind} {output.noun}")
    if options.summary_json:
        try:
            options.summary_json.write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            why = f"cannot write {options.summary_json}: {exc.strerror}"
            raise UsageError("--summary-json", why) from None
    dead = sum(r["dead_lettered"] for r in rows)
    unkept = sum(r["dead_letters_unkept"] for r in rows)
    if dead - unkept and options.command == "replay":
        where = sup.store.directory
        print(
            f"{dead - unkept} events dead-lettered; see: agent-host deadletters --state-dir {where}"
        )
    if unkept:
        print(
            f"{unkept} dead-lettered events could not be kept: the state folder "
            f"{sup.store.directory} could not be written (the log says why)"
        )
