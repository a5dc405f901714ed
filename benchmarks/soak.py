"""Soak: the daemon on its bundled plugins at a steady rate for a long time, one worker killed
every few seconds; host and zygote memory, open fds, workers and plugins by state sampled every
minute. Memory must level off: the report gives the slope over the last ten minutes.

    python -m benchmarks.soak --minutes 30 --rate 2000 --kill-every 5 --out soak/

Not a test (it takes half an hour); its numbers go in the notes of a change that could leak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from agent_host.cli import status
from agent_host.errors import UsageError
from agent_host.host.sandbox import worker_uid

REPO = Path(__file__).resolve().parent.parent


def _workers(host: psutil.Process) -> list[psutil.Process]:
    """The host's workers: each the first process of a worker uid of this host's (its slots,
    ``host/sandbox.py``) under a process of another uid. Found by uid, not as the host's
    descendants: in its pid namespace a worker's tree hangs from the namespace's init, and what
    it started from orphans that init adopts."""
    uids = range(worker_uid(0, host.pid), worker_uid(255, host.pid) + 1)
    by_pid = {}
    for proc in psutil.process_iter(["uids", "ppid"]):
        if proc.info["uids"] is not None:
            by_pid[proc.pid] = proc
    found = []
    for proc in by_pid.values():
        parent = by_pid.get(proc.info["ppid"])
        if proc.info["uids"].real in uids and (
            parent is None or parent.info["uids"].real not in uids
        ):
            found.append(proc)
    return found


def _zygote(host: psutil.Process) -> psutil.Process | None:
    for proc in host.children():
        try:
            if "agent_host.worker.zygote" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def _mib(proc: psutil.Process | None) -> float:
    return proc.memory_info().rss / 2**20 if proc is not None else 0.0


def _anon_mib(proc: psutil.Process | None) -> float:
    """Anonymous resident memory: the heap and arenas, without library pages once touched.

    RSS also counts file-backed pages (code of libraries the host has run at least once), which
    grow at the start and then stay; RssAnon is the part a leak would grow.
    """
    if proc is None:
        return 0.0
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _plugin_states(control: Path) -> dict[str, object]:
    """The plugins by state, as the host says over its control socket: a worker count of 0
    with every plugin "backing_off" is plugins waiting out their restart backoff, not a
    miscount."""
    try:
        reply = status.ask(control)
    except UsageError:
        return {"plugin_states": "no answer"}
    return {
        "plugin_states": dict(Counter(p.state for p in reply.plugins)),
        "events_per_s": round(reply.host.events_per_s),
        "backlog_batches": reply.host.backlog_batches,
    }


def _fds(proc: psutil.Process | None) -> int:
    return proc.num_fds() if proc is not None else 0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def run(minutes: float, rate: float, kill_every: float, out: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="agent-host-soak-"))
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-level", "warning", "run"),
            *("--source", "synthetic", "--rate", str(rate), "--duration", str(minutes * 60)),
            *("--quiet", "--no-watch-plugins", "--state-dir", str(work / "state")),
            *("--findings", str(work / "findings.jsonl"), "--summary-json", str(work / "s.json")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    host = psutil.Process(agent.pid)
    samples: list[dict[str, Any]] = []
    kills = 0
    started = time.monotonic()
    next_kill, next_sample = started + kill_every, started + 60
    chooser = random.Random(1)
    while agent.poll() is None:
        now = time.monotonic()
        if now >= next_kill:
            next_kill += kill_every
            workers = _workers(host)
            if workers:
                try:
                    chooser.choice(workers).send_signal(signal.SIGKILL)
                    kills += 1
                except psutil.Error:
                    pass
        if now >= next_sample:
            next_sample += 60
            zygote = _zygote(host)
            sample = {
                "minute": round((now - started) / 60, 2),
                "host_rss_mib": round(_mib(host), 1),
                "host_anon_mib": round(_anon_mib(host), 1),
                "zygote_rss_mib": round(_mib(zygote), 1),
                "host_fds": _fds(host),
                "zygote_fds": _fds(zygote),
                "workers": len(_workers(host)),
                **_plugin_states(work / "state" / "control.sock"),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        time.sleep(0.2)
    summary = json.loads((work / "s.json").read_text()) if (work / "s.json").exists() else {}
    last = [s for s in samples if s["minute"] >= minutes - 10]
    result: dict[str, object] = {
        "minutes": minutes,
        "rate": rate,
        "kill_every_s": kill_every,
        "kills": kills,
        "exit_code": agent.returncode,
        "events": summary.get("events"),
        "samples": samples,
        "host_rss_slope_mib_per_min_last_10": round(
            slope([(s["minute"], s["host_rss_mib"]) for s in last]), 3
        ),
        "host_anon_slope_mib_per_min_last_10": round(
            slope([(s["minute"], s["host_anon_mib"]) for s in last]), 3
        ),
        "zygote_rss_slope_mib_per_min_last_10": round(
            slope([(s["minute"], s["zygote_rss_mib"]) for s in last]), 3
        ),
        "host_fds_slope_per_min_last_10": round(
            slope([(s["minute"], s["host_fds"]) for s in last]), 3
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--kill-every", type=float, default=5)
    parser.add_argument("--out", type=Path, default=Path("soak"))
    args = parser.parse_args()
    result = run(args.minutes, args.rate, args.kill_every, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
