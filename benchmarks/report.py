"""results.json as Markdown tables and PNG plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TARGET_TEXT = {
    "ratio_trivial_1": "isolated / in-process throughput, 1 trivial plugin",
    "ratio_realistic_4": "isolated / in-process throughput, 4 realistic plugins",
    "ratio_trivial_1_parsed": "isolated / in-process throughput, 1 trivial plugin, pre-parsed",
    "decode_binary_us": "recording decode per event, binary (us)",
    "decode_jsonl_us": "recording decode per event, JSON Lines (us)",
    "sigma_us_138": "sigma per process event, 138 rules (us)",
    "sigma_us_1000": "sigma per process event, ~1,000 rules (us)",
    "latency_p99_ms_at_10k": "p99 event-to-finding latency at 10k events/s (ms)",
    "latency_p99_ms_at_50k": "p99 event-to-finding latency at 50k events/s, a finding each (ms)",
    "restart_p50_ms": "restart latency p50 (ms)",
    "hang_p50_over_ms": "hang detected after the deadline, p50 (ms)",
    "containment_ratio": "healthy throughput beside a crash loop / alone",
    "worker_uss_mb": "worker USS (MB)",
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    rows = []
    for name, t in results["targets"].items():
        better = ">=" if name.startswith("ratio") or name == "containment_ratio" else "<="
        rows.append(
            [
                TARGET_TEXT[name],
                f"{t['value']:.2f}",
                f"{better} {t['target']:g}",
                "met" if t["met"] else "not met",
            ]
        )
    return _table(["target", "measured", "goal", ""], rows)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        "# agent-host benchmarks",
        "",
        f"{m['cores']} cores, Python {m['python']}, grpcio {m['grpcio']}, protobuf "
        f"{m['protobuf']} ({m['protobuf_backend']}), {m['platform']}"
        + (" (quick run)" if results["quick"] else ""),
        "",
        "## Targets",
        "",
        summary(results),
        "",
        "## Throughput (events/s; same recording, in-process and isolated in the same run)",
        "",
        _table(
            ["plugins", "workload", "events", "in-process", "isolated", "ratio"],
            [
                [
                    str(r["plugins"]),
                    r["workload"],
                    str(r["events"]),
                    f"{r['in_process_eps']:,.0f}",
                    f"{r['isolated_eps']:,.0f}",
                    f"{r['ratio']:.2f}",
                ]
                for r in results["throughput"]
            ],
        ),
        "",
        "![throughput](throughput.png)",
        "",
        "## Latency, event entering the host to its finding written (ms)",
        "",
        _table(
            ["offered events/s", "achieved", "flush interval (ms)", "p50", "p99", "max"],
            [
                [
                    f"{r['offered_eps']:,.0f}",
                    f"{r['achieved_eps']:,.0f}",
                    f"{r['flush_ms']:g}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['max_ms']:.1f}",
                ]
                for r in results["latency"]
            ],
        ),
        "",
        "![latency](latency.png)",
        "",
        "## Faults",
        "",
        _table(
            ["measure", "p50 (ms)", "p99 / max (ms)", "n"],
            [
                [
                    "restart: SIGKILL to the replacement's finding",
                    f"{results['restart']['p50_ms']:.1f}",
                    f"{results['restart']['p99_ms']:.1f}",
                    str(results["restart"]["kills"]),
                ],
                [
                    "hang: worker gone, past the deadline of "
                    f"{results['hang_detection']['deadline_ms']:g} ms",
                    f"{results['hang_detection']['p50_over_ms']:.1f}",
                    f"{results['hang_detection']['max_over_ms']:.1f}",
                    str(results["hang_detection"]["hangs"]),
                ],
            ],
        ),
        "",
        f"Containment: two healthy plugins process "
        f"{results['containment']['healthy_eps_alone']:,.0f} events/s alone and "
        f"{results['containment']['healthy_eps_beside_crashloop']:,.0f} events/s beside a plugin "
        f"that dies on every event (default restart policy): ratio "
        f"{results['containment_ratio']:.2f}.",
        "",
        *_scaling_sections(results),
        "## Memory (MB)",
        "",
        _table(
            ["plugins", "worker USS (median)", "worker PSS (median)", "host RSS"],
            [
                [
                    str(r["plugins"]),
                    f"{r['worker_uss_mb']:.1f}",
                    f"{r['worker_pss_mb']:.1f}",
                    f"{r['host_rss_mb']:.1f}",
                ]
                for r in results["memory"]
            ],
        ),
        "",
    ]
    return "\n".join(parts)


def _side_by_side(rows: list[dict[str, Any]], key: str, label: str) -> str:
    return _table(
        [label, "in-process (events/s)", "isolated (events/s)", "ratio"],
        [
            [
                str(r[key]),
                f"{r['in_process_eps']:,.0f}",
                f"{r['isolated_eps']:,.0f}",
                f"{r['ratio']:.2f}",
            ]
            for r in rows
        ],
    )


def _scaling_sections(results: dict[str, Any]) -> list[str]:
    if "scaling" not in results:
        return []
    sweeps = results["scaling"]
    d = results["decode"]
    return [
        "## Decoding a recording (us per event)",
        "",
        _table(
            ["binary", "JSON Lines (orjson)", "JSON Lines (json_format, before)"],
            [[f"{d['binary_us']:.2f}", f"{d['jsonl_us']:.2f}", f"{d['json_format_us']:.2f}"]],
        ),
        "",
        "## Sigma per process event as rules grow (us)",
        "",
        _table(
            ["rules", "process_creation", "indexed", "plan", "rule by rule"],
            [
                [
                    str(r["rules"]),
                    str(r["process_rules"]),
                    str(r["indexed"]),
                    f"{r['plan_us']:.1f}",
                    f"{r['one_by_one_us']:.1f}",
                ]
                for r in results["sigma_rules"]
            ],
        ),
        "",
        "## Throughput as one thing varies (events pre-parsed)",
        "",
        _side_by_side(sweeps["plugins"], "plugins", "trivial plugins"),
        "",
        _side_by_side(sweeps["batch"], "batch_size", "batch size"),
        "",
        _side_by_side(sweeps["findings"], "findings_per_event", "findings per event"),
        "",
    ]


def _sweep_plot(plt: Any, rows: list[dict[str, Any]], key: str, label: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r[key] for r in rows]
    ax.plot(xs, [r["in_process_eps"] for r in rows], "o-", label="in-process")
    ax.plot(xs, [r["isolated_eps"] for r in rows], "s-", label="isolated")
    ax.set_xscale("symlog" if min(xs) == 0 else "log", base=2)
    ax.set_xlabel(label)
    ax.set_ylabel("events/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput by {label}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scaling_plots(plt: Any, results: dict[str, Any], out: Path) -> None:
    if "scaling" not in results:
        return
    sweeps = results["scaling"]
    _sweep_plot(plt, sweeps["plugins"], "plugins", "plugins", out / "scaling_plugins.png")
    _sweep_plot(plt, sweeps["batch"], "batch_size", "batch size", out / "scaling_batch.png")
    _sweep_plot(
        plt,
        sweeps["findings"],
        "findings_per_event",
        "findings per event",
        out / "scaling_findings.png",
    )
    rows = results["sigma_rules"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [r["rules"] for r in rows]
    ax.plot(xs, [r["plan_us"] for r in rows], "o-", label="plan (indexed)")
    ax.plot(xs, [r["one_by_one_us"] for r in rows], "s-", label="rule by rule")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Sigma rules")
    ax.set_ylabel("us per process event")
    ax.set_title("Sigma evaluation as rules grow")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling_sigma.png", dpi=110)
    plt.close(fig)


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["throughput"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['plugins']} {r['workload']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["in_process_eps"] for r in rows], 0.4, label="in-process")
    ax.bar([i + 0.2 for i in x], [r["isolated_eps"] for r in rows], 0.4, label="isolated")
    ax.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("events/s")
    ax.set_title("Throughput, same recording, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    lat = [r for r in results["latency"] if r["flush_ms"] == 5]
    ax.plot([r["offered_eps"] for r in lat], [r["p50_ms"] for r in lat], "o-", label="p50")
    ax.plot([r["offered_eps"] for r in lat], [r["p99_ms"] for r in lat], "s-", label="p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered events/s")
    ax.set_ylabel("event to finding (ms)")
    ax.set_title("Latency, flush interval 5 ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    _scaling_plots(plt, results, out)


def write(results: dict[str, Any], out: Path) -> bool:
    """Write report.md, then the plots if matplotlib is there; return whether they were drawn.

    The report never depends on the plots: an install without the dev extra still gets every
    number it measured.
    """
    (out / "report.md").write_text(markdown(results))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "plots skipped: matplotlib is not installed (pip install 'agent-host[dev]')",
            file=sys.stderr,
        )
        return False
    plots(results, out)
    return True
