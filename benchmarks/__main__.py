"""The benchmark suite: what isolation costs against the in-process baseline.

    python -m benchmarks [--quick] [--out DIR]

Writes DIR/results.json, DIR/report.md and PNG plots. Every comparison is measured side by side
in the same run (the machines are noisy): read the ratios, not the absolute numbers. ``--quick``
is a smoke run (under two minutes) that fails only on gross breakage: an exception, or a result
under a tenth of its target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_host import logs
from benchmarks import faults, latency, memory, report, scaling, throughput
from benchmarks.common import make_events, make_recording, median, percentile, realistic, trivial

#: target value, and whether higher is better
TARGETS: dict[str, tuple[float, bool]] = {
    "ratio_trivial_1": (0.8, True),
    "ratio_realistic_4": (1.5, True),
    "ratio_trivial_1_parsed": (0.7, True),
    "decode_binary_us": (3.0, False),
    "decode_jsonl_us": (10.0, False),
    "sigma_us_138": (15.0, False),
    "sigma_us_1000": (40.0, False),
    "latency_p99_ms_at_10k": (20.0, False),
    "latency_p99_ms_at_50k": (50.0, False),
    "restart_p50_ms": (50.0, False),
    "hang_p50_over_ms": (100.0, False),
    "containment_ratio": (0.95, True),
    "worker_uss_mb": (15.0, False),
}


class Progress:
    """One line per step on stderr: what runs, how far along, how long it took."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.done = 0
        self.started = time.monotonic()

    def run(self, label: str, step: Callable[[], Any]) -> Any:
        self.done += 1
        print(f"[{self.done:>2}/{self.steps}] {label} ...", end="", file=sys.stderr, flush=True)
        t = time.monotonic()
        result = step()
        print(
            f" {time.monotonic() - t:.1f}s (total {time.monotonic() - self.started:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
        return result


def machine() -> dict[str, Any]:
    import grpc
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "protobuf_backend": api_implementation.Type(),
        "platform": platform.platform(),
    }


def run(quick: bool, out: Path) -> dict[str, Any]:
    n_events = 10_000 if quick else 100_000
    plugin_counts = [1, 4] if quick else [1, 2, 4]
    rates = [1_000, 10_000] if quick else [1_000, 10_000, 50_000]
    flushes = [0.005] if quick else [0.001, 0.005, 0.02]
    kills, hangs = (5, 3) if quick else (25, 10)
    memory_counts = [1, 4] if quick else [1, 4, 16]
    rule_counts = [10, 138] if quick else [10, 138, 300, 1000]
    steps = 2 * len(plugin_counts) + 1 + len(rates) + len(flushes) - 1 + 3 + len(memory_counts) + 3
    progress = Progress(steps)
    results: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "throughput": [],
        "latency": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        recording = make_recording(workdir / "events.jsonl", n_events)
        for workload, pick in (("trivial", trivial), ("realistic", realistic)):
            for n in plugin_counts:
                manifests = pick(n, workdir / workload)
                row = progress.run(
                    f"throughput: {n} {workload} plugin(s), {n_events} events",
                    lambda m=manifests: throughput.measure(recording, m),
                )
                results["throughput"].append({"plugins": n, "workload": workload, **row})
        parsed = make_events(n_events)
        row = progress.run(
            "throughput: 1 trivial plugin, events already parsed",
            lambda: throughput.measure(recording, trivial(1, workdir / "trivial"), parsed=parsed),
        )
        results["throughput"].append({"plugins": 1, "workload": "trivial, pre-parsed", **row})
        results["scaling"] = progress.run(
            "scaling: plugins, batch size, findings per event (pre-parsed)",
            lambda: scaling.sweeps(n_events // 5, workdir, quick),
        )

    seconds = 1.0 if quick else 3.0
    for rate in rates:
        results["latency"].append(
            progress.run(f"latency at {rate} events/s", lambda r=rate: latency.measure(r, seconds))
        )
    for flush in flushes:
        if flush == 0.005:
            continue  # measured above
        results["latency"].append(
            progress.run(
                f"latency at 10000 events/s, flush {flush * 1000:g} ms",
                lambda f=flush: latency.measure(10_000, seconds, f),
            )
        )

    restarts = progress.run(
        f"restart latency over {kills} kills", lambda: asyncio.run(faults.restart_latencies(kills))
    )
    ms = [v * 1000 for v in restarts]
    results["restart"] = {
        "p50_ms": median(ms),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
        "kills": kills,
    }
    deadline, overshoots = progress.run(
        f"hang detection over {hangs} hangs", lambda: asyncio.run(faults.hang_overshoots(hangs))
    )
    over = [v * 1000 for v in overshoots]
    results["hang_detection"] = {
        "deadline_ms": deadline * 1000,
        "p50_over_ms": median(over),
        "max_over_ms": max(over),
        "hangs": hangs,
    }
    contained = progress.run(
        "containment: healthy plugins beside a crash loop",
        lambda: faults.containment_ratio(n_events // 2),
    )
    results["containment"] = contained
    results["containment_ratio"] = contained["containment_ratio"]
    results["memory"] = [
        progress.run(f"memory with {n} plugins", lambda n=n: memory.measure(n))
        for n in memory_counts
    ]
    results["worker_uss_mb"] = results["memory"][0]["worker_uss_mb"]
    # Last: these load a thousand rules into this process, whose heap would slow the latency
    # runs above (a larger heap, longer collections).
    results["decode"] = progress.run(
        "decoding recordings, per event", lambda: scaling.decode(n_events // 5)
    )
    results["sigma_rules"] = progress.run(
        f"sigma per process event with {', '.join(map(str, rule_counts))} rules",
        lambda: scaling.sigma_rules(rule_counts, n_events // 20),
    )
    results["targets"] = check_targets(results)

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    results["plots"] = report.write(results, out)
    return results


def observed(results: dict[str, Any]) -> dict[str, float]:
    def ratio(workload: str, plugins: int) -> float:
        return next(
            (
                r["ratio"]
                for r in results["throughput"]
                if r["workload"] == workload and r["plugins"] == plugins
            ),
            float("nan"),
        )

    def sigma(rules: int) -> float:
        """The planned cost at the generated count closest to ``rules`` (duplicates collapse)."""
        rows = [r for r in results["sigma_rules"] if abs(r["rules"] - rules) <= rules * 0.05]
        return rows[-1]["plan_us"] if rows else float("nan")

    at_10k = next(
        r for r in results["latency"] if r["offered_eps"] == 10_000 and r["flush_ms"] == 5
    )
    at_50k = next(
        (r for r in results["latency"] if r["offered_eps"] == 50_000 and r["flush_ms"] == 5),
        None,
    )
    return {
        "ratio_trivial_1": ratio("trivial", 1),
        "ratio_realistic_4": ratio("realistic", 4),
        "ratio_trivial_1_parsed": ratio("trivial, pre-parsed", 1),
        "decode_binary_us": results["decode"]["binary_us"],
        "decode_jsonl_us": results["decode"]["jsonl_us"],
        "sigma_us_138": sigma(138),
        "sigma_us_1000": sigma(1000),
        "latency_p99_ms_at_10k": at_10k["p99_ms"],
        "latency_p99_ms_at_50k": at_50k["p99_ms"] if at_50k else float("nan"),
        "restart_p50_ms": results["restart"]["p50_ms"],
        "hang_p50_over_ms": results["hang_detection"]["p50_over_ms"],
        "containment_ratio": results["containment_ratio"],
        "worker_uss_mb": results["worker_uss_mb"],
    }


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the value seen, whether it is met, and whether it is grossly missed
    (worse than a tenth of the target: the only failure a smoke run reports)."""
    checked = {}
    for name, value in observed(results).items():
        target, higher = TARGETS[name]
        met = value >= target if higher else value <= target
        gross = value < target / 10 if higher else value > target * 10
        checked[name] = {"value": value, "target": target, "met": met, "gross_miss": gross}
    return checked


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, under two minutes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"), metavar="DIR")
    args = parser.parse_args()
    logs.configure("console", "critical")
    results = run(args.quick, args.out)
    print(report.summary(results))
    drawn = " and plots" if results["plots"] else ""
    print(f"\nwrote {args.out}/results.json, report.md{drawn}")
    gross = [n for n, t in results["targets"].items() if t["gross_miss"]]
    if gross:
        print(
            f"gross breakage (worse than a tenth of the target): {', '.join(gross)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
