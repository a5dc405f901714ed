"""Live cost: the agent's own CPU, memory and completeness on real activity (as root).

    python -m benchmarks.live [--seconds 30] [--out DIR] [--only NAME]

Each scenario starts ``agent-host run`` afresh (live sensors, the bundled plugins and a
counting plugin, ``benchmarks/plugins/witness``) in a cgroup of its own, waits until it has
settled, then measures for ``--seconds``:

- idle: nothing but the machine's own life;
- idle, +1,000 processes: the same with 1,000 extra sleeping processes;
- execs: 1,500 starts a second of one executable (a copy of ``true`` under a folder of this
  run's, so that no rule about where it lies fires), paced by a generator outside the agent;
- files: 5,000 files a second created and written in a folder under ``/tmp`` (watched);
- both at once.

Agent CPU is the cgroup's CPU time (the host, its zygote, every worker and all they started,
exited or not) over the window, in percent of one core; host RSS the largest of the host
process's samples, one a second. Completeness is what the witness plugin was given over what
the generators did: every event went through the sensors, the host and a worker; before the
agent is stopped, the benchmark waits (at most 60 s) until the host has taken every event the
generators caused, and reports how long that took ("caught up after"): what is late is not
counted as lost, and the lag is shown. The anchors
beside them: osquery's watchdog (10% CPU sustained, 200 MB; 5% and 100 MB at its restrictive
level) and Falco's published performance tests (about 38% CPU with 2% lost at 4,400
events/s).

The results go to ``DIR/live.json`` and ``DIR/live.md`` (default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent_host.cli.status import ask
from agent_host.host.cgroups import WorkerCgroup

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUNDLED = REPO / "agent_host" / "plugins"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ANCHORS = (
    "osquery watchdog: 10% CPU sustained for 12 s, 200 MB (restrictive: 5%, 100 MB); "
    "Falco: about 38% CPU and 2% lost at 4,400 events/s"
)

#: Starts ``EXE N`` at ``RATE`` a second for ``SECONDS``, reaping as it goes; prints how many.
_EXEC_GENERATOR = """
import os, sys, time
exe, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
start, n = time.monotonic(), 0
while (now := time.monotonic() - start) < seconds:
    for _ in range(int(now * rate) - n):
        os.posix_spawn(exe, [exe, str(n)], {})
        n += 1
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    time.sleep(0.002)
try:
    while True:
        os.wait()
except ChildProcessError:
    pass
print(n)
"""

#: Creates and writes ``RATE`` files a second in FOLDER for ``SECONDS``; prints how many.
_FILE_GENERATOR = """
import os, sys, time
folder, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
start, n = time.monotonic(), 0
while (now := time.monotonic() - start) < seconds:
    for _ in range(int(now * rate) - n):
        if n % 1000 == 0:
            os.mkdir(os.path.join(folder, f"d{n // 1000}"))
        fd = os.open(os.path.join(folder, f"d{n // 1000}", f"f{n}"), os.O_CREAT | os.O_WRONLY)
        os.write(fd, b"x")
        os.close(fd)
        n += 1
    time.sleep(0.002)
print(n)
"""


@dataclass
class Result:
    scenario: str
    agent_cpu_percent: float
    host_rss_mib: float
    execs_made: int = 0
    execs_seen: int = 0
    files_made: int = 0
    files_seen: int = 0
    exit_code: int = 0
    #: What the sensors emitted, dropped (the hub's queue) and restarted, from the summary, and
    #: the records the kernel said it lost (audit's backlog), from the agent's log.
    sensors: dict[str, Any] = field(default_factory=dict)
    #: Seconds from the generators' end until the host had taken every event (its lag).
    catch_up_s: float = 0.0

    def completeness(self) -> str:
        parts = []
        if self.execs_made:
            parts.append(f"execs {100 * self.execs_seen / self.execs_made:.1f}%")
        if self.files_made:
            parts.append(f"files {100 * self.files_seen / self.files_made:.1f}%")
        return ", ".join(parts) or "-"


class AgentCgroup:
    """A CPU-accounting cgroup the agent runs in (its workers' cgroups are made below it)."""

    def __init__(self, name: str) -> None:
        accounting = [CGROUP_ROOT / c for c in ("cpuacct", "cpu,cpuacct")]
        v1 = next((folder for folder in accounting if folder.is_dir()), None)
        self.v1 = v1 is not None
        if v1 is not None:
            self.folders = [v1 / name]
        elif (CGROUP_ROOT / "cgroup.controllers").is_file():
            self.folders = [CGROUP_ROOT / name]
        else:
            raise SystemExit("benchmarks.live: no cpuacct or cgroup v2 hierarchy to account in")
        # The memory and pids hierarchies too (v1), so that the agent's own cgroups for its
        # workers are made below this one, as under its systemd unit.
        for controller in ("memory", "pids"):
            if self.v1 and (CGROUP_ROOT / controller).is_dir():
                self.folders.append(CGROUP_ROOT / controller / name)
        for folder in self.folders:
            folder.mkdir(exist_ok=True)

    def usage(self) -> float:
        """CPU seconds used in the cgroup, by every process it ever held."""
        accounting = WorkerCgroup({"cpuacct": self.folders[0]}, 1 if self.v1 else 2)
        return accounting.cpu_seconds() or 0.0

    def join(self) -> None:
        """Move the calling process in (run in the agent's child before it executes)."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for folder in self.folders:
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _start_agent(
    work: Path, cgroup: AgentCgroup, marker_exe: Path, storm: Path
) -> subprocess.Popen[str]:
    plugins = work / "plugins"
    witness = plugins / "witness"
    shutil.copytree(HERE / "plugins" / "witness", witness)
    toml = (witness / "plugin.toml").read_text()
    toml = toml.replace('exe = ""', f'exe = "{marker_exe}"').replace(
        'folder = ""', f'folder = "{storm}/"'
    )
    (witness / "plugin.toml").write_text(toml)
    command = [sys.executable, "-m", "agent_host", "--log-format", "json", "run", "--quiet"]
    command += ["--plugins", str(BUNDLED), "--plugins", str(plugins)]
    command += ["--findings", str(work / "findings.jsonl"), "--state-dir", str(work / "state")]
    command += ["--summary-json", str(work / "summary.json")]
    command += ["--control-socket", str(work / "control.sock")]
    return subprocess.Popen(
        command,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=(work / "agent.log").open("w"),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=cgroup.join,  # noqa: PLW1509 (no threads here yet: the benchmark's own)
        text=True,
    )


def _wait_started(work: Path, agent: subprocess.Popen[str], plugins: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (work / "agent.log").read_text()
        if text.count('"plugin started"') >= plugins and '"sensor started"' in text:
            return
        if agent.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(
        f"benchmarks.live: the agent did not start:\n{(work / 'agent.log').read_text()}"
    )


def run_scenario(
    name: str, seconds: float, execs: float = 0, files: float = 0, sleepers: int = 0
) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="agent-host-live-") as tmp,
        tempfile.TemporaryDirectory(prefix="agent-host-live-", dir=Path.home()) as home_tmp,
    ):
        work, storm = Path(tmp), Path(tmp) / "storm"
        storm.mkdir()
        marker = Path(home_tmp) / "agent-host-live-true"
        shutil.copy(shutil.which("true") or "/bin/true", marker)
        cgroup = AgentCgroup(f"agent-host-live-{os.getpid()}")
        sleeping = [subprocess.Popen(["sleep", "600"]) for _ in range(sleepers)]
        agent = _start_agent(work, cgroup, marker, storm)
        try:
            _wait_started(work, agent, plugins=5)
            time.sleep(5)  # settled: imports done, rules compiled
            host = psutil.Process(agent.pid)
            generators = []
            if execs:
                generators.append(
                    ("execs", _generate(_EXEC_GENERATOR, str(marker), execs, seconds))
                )
            if files:
                generators.append(("files", _generate(_FILE_GENERATOR, str(storm), files, seconds)))
            started, cpu_before = time.monotonic(), cgroup.usage()
            rss = 0.0
            while time.monotonic() - started < seconds:
                rss = max(rss, host.memory_info().rss / 2**20)
                time.sleep(1)
            made = {kind: int(proc.communicate()[0].strip() or 0) for kind, proc in generators}
            cpu = cgroup.usage() - cpu_before
            took = time.monotonic() - started
            catch_up = _caught_up(work / "control.sock")
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(120)
            for proc in sleeping:
                proc.kill()
                proc.wait()
            cgroup.remove()
        seen = _witnessed(work / "findings.jsonl")
        sensors = _sensor_counts(work)
    return Result(
        scenario=name,
        agent_cpu_percent=round(100 * cpu / took, 1),
        host_rss_mib=round(rss, 1),
        execs_made=made.get("execs", 0),
        execs_seen=seen.get("starts", 0),
        files_made=made.get("files", 0),
        files_seen=seen.get("files", 0),
        exit_code=code,
        sensors=sensors,
        catch_up_s=catch_up,
    )


def _caught_up(control: Path, quiet_s: float = 1.5, most_s: float = 60.0) -> float:
    """Seconds until the host has taken every event the generators caused (its count of
    accepted events still for ``quiet_s``, no batch kept), at most ``most_s``: what is seen
    late is not lost, and what is still queued when the agent stops would count as unseen."""
    started = last_change = time.monotonic()
    last = -1
    while time.monotonic() - started < most_s:
        host = ask(control).host
        now = time.monotonic()
        if host.events_accepted != last:
            last, last_change = host.events_accepted, now
        elif now - last_change >= quiet_s and not host.backlog_batches:
            return round(last_change - started, 1)
        time.sleep(0.1)
    return most_s


def _sensor_counts(work: Path) -> dict[str, Any]:
    summary = work / "summary.json"
    counts: dict[str, Any] = (
        json.loads(summary.read_text()).get("sensors", {}) if summary.exists() else {}
    )
    lost = 0
    for line in (work / "agent.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "audit records lost by the kernel (backlog full)":
                lost += int(entry.get("lost", 0))
    counts["kernel_lost"] = lost
    return counts


def _generate(program: str, target: str, rate: float, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", program, target, str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _witnessed(findings: Path) -> dict[str, int]:
    for line in findings.read_text().splitlines() if findings.exists() else ():
        finding = json.loads(line)
        if finding.get("rule") == "witness":
            return {k: int(v) for k, v in finding.get("attributes", {}).items()}
    return {}


SCENARIOS = {
    "idle": {},
    "idle, +1,000 processes": {"sleepers": 1000},
    "1,500 execs/s": {"execs": 1500},
    "5,000 file changes/s": {"files": 5000},
    "both": {"execs": 1500, "files": 5000},
}


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | agent CPU (% of a core) | host RSS (MiB) | seen | caught up after |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.agent_cpu_percent:.1f} | {r.host_rss_mib:.0f} | "
            f"{r.completeness()} | {r.catch_up_s:.1f} s |"
        )
    return "\n".join(lines) + f"\n\nAnchors: {ANCHORS}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks.live: needs root (live sensors, cgroups)")
    results = []
    for name, load in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        result = run_scenario(name, args.seconds, **load)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    machine = f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    text = f"Live cost, {args.seconds:g} s a scenario, on {machine}:\n\n{table(results)}"
    (args.out / "live.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
