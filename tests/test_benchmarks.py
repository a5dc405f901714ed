"""The benchmark suite's smoke run: it finishes, writes what it promises, and nothing is grossly
broken. It never judges timings within a tenth of their targets: the machines are noisy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks import soak
from tests.helpers import BackgroundHost, make_plugin

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # 35 s: a benchmark's smoke run; .ci/run runs it after the test command
def test_quick_run(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert elapsed < 20 * 60  # 10x the two-minute budget: a wide margin, never a flake

    results = json.loads((tmp_path / "results.json").read_text())
    row = results["throughput"][0]
    assert {"plugins", "workload", "in_process_eps", "isolated_eps", "ratio"} <= set(row)
    assert {r["workload"] for r in results["throughput"]} >= {"trivial", "realistic"}
    assert {"offered_eps", "p50_ms", "p99_ms"} <= set(results["latency"][0])
    assert {"p50_ms", "p99_ms"} <= set(results["restart"])
    assert {"deadline_ms", "p50_over_ms"} <= set(results["hang_detection"])
    assert results["containment_ratio"] > 0
    assert results["worker_uss_mb"] > 0
    assert {"cores", "python", "grpcio", "protobuf", "protobuf_backend"} <= set(results["machine"])
    misses = {name: t for name, t in results["targets"].items() if t["gross_miss"]}
    assert misses == {}

    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# agent-host benchmarks")
    assert "| isolated / in-process throughput, 1 trivial plugin |" in report
    for plot in ("throughput.png", "latency.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Without matplotlib (an install without the dev extra) the report is still written.
    bare = tmp_path / "bare"
    bare.mkdir()
    script = (
        "import json, sys; from pathlib import Path; sys.modules['matplotlib'] = None; "
        "from benchmarks import report; "
        f"r = json.loads(Path({str(tmp_path / 'results.json')!r}).read_text()); "
        f"print(report.write(r, Path({str(bare)!r})))"
    )
    drawn = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert drawn.stdout.strip() == "False"
    assert drawn.stderr.strip() == (
        "plots skipped: matplotlib is not installed (pip install 'agent-host[dev]')"
    )
    assert (bare / "report.md").read_text() == report
    assert not list(bare.glob("*.png"))


@pytest.mark.skipif(os.geteuid() != 0, reason="workers have uids of their own only as root")
def test_the_soak_counts_the_workers_that_run(tmp_path: Path) -> None:
    """The soak's count is what runs: one worker a plugin, before and after one is killed and
    restarted (it counted 0 once the sandbox hung workers from their pid namespace's init)."""
    for name in ("one", "two"):
        make_plugin(
            tmp_path / "plugins",
            name,
            "from agent_host.sdk import Plugin\n\nclass Detector(Plugin):\n    pass\n",
        )
    host = BackgroundHost(
        ["run", "--source", "synthetic", "--rate", "20", "--plugins", "plugins"], tmp_path
    )
    try:
        host.wait_log("plugin started", count=2)
        process = psutil.Process(host.proc.pid)
        workers = soak._workers(process)
        assert len(workers) == 2
        killed = workers[0]
        killed.kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # its replacement started
            now = soak._workers(process)
            if len(now) == 2 and killed.pid not in {w.pid for w in now}:
                break
            time.sleep(0.1)
        assert len(now) == 2 and killed.pid not in {w.pid for w in now}
    finally:
        host.stop()
