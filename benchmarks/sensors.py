"""What the live sensors see of a storm, before (connector, inotify) and after (audit, fanotify).

    python -m benchmarks.sensors [--seconds 10] [--rate 5000] [--files 50000]

- execs: short processes (``/bin/true`` with a numbered argument) started by shell loops for
  ``--seconds`` at up to ``--rate`` a second; the share reported with the executable and the
  full argv, and the CPU the sensor took (this process's own CPU: the storm is its children);
- files: ``--files`` files created and written, 100 to a folder, by another process; the share
  of creations seen, the kernel queue overflows, and the sensor's CPU.

Each sensor runs alone, the fallback first, on the same storm, in one run: compare ratios.
Needs root (audit, fanotify); without it only the fallbacks are measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from agent_host.protocol import Event, FileEvent, ProcessEvent
from agent_host.sources.live import audit
from agent_host.sources.live.base import Sensor
from agent_host.sources.live.fanotify_sensor import FanotifySensor, fanotify_unavailable
from agent_host.sources.live.inotify_sensor import InotifySensor
from agent_host.sources.live.process import NetlinkProcessSensor
from agent_host.sources.live.syscalls import SyscallSensor


class _Run:
    """A sensor in a thread, its events kept, and the CPU this process spent meanwhile."""

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.events: list[Event] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=sensor.run, args=(self.events.append, self._stop))

    def __enter__(self) -> _Run:
        self._thread.start()
        self.sensor.ready.wait(10)
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = time.process_time() - self._cpu
        self._stop.set()
        self._thread.join(10)


def _exec_storm(seconds: float, rate: float, marker: str) -> int:
    """Start /bin/true MARKER-N from shell loops until ``seconds`` pass; how many were run."""
    loops = max(1, os.cpu_count() or 1)
    per_loop = int(seconds * rate / loops)
    script = (
        f"i=0; end=$(( $(date +%s) + {int(seconds)} )); while [ $i -lt {per_loop} ]; do "
        f"/bin/true {marker}-$1-$i; i=$((i+1)); "
        f"[ $((i % 200)) -eq 0 ] && [ $(date +%s) -ge $end ] && break; done; echo $i"
    )
    procs = [
        subprocess.Popen(["sh", "-c", script, "sh", str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(loops)
    ]
    return sum(int(p.communicate()[0].strip() or 0) for p in procs)


def bench_execs(name: str, make: Callable[[], Sensor], seconds: float, rate: float) -> str:
    marker = f"storm{os.getpid()}{name}"
    with _Run(make()) as run:
        started = time.monotonic()
        ran = _exec_storm(seconds, rate, marker)
        took = time.monotonic() - started
        time.sleep(2.0)
    complete = sum(
        1
        for e in run.events
        if e.process.action == ProcessEvent.START
        and e.process.exe == "/usr/bin/true"
        and len(e.process.cmdline) == 2
        and e.process.cmdline[1].startswith(marker)
    )
    return (
        f"execs {name}: {ran} run in {took:.1f}s ({ran / took:,.0f}/s); with exe and full argv: "
        f"{complete} ({100 * complete / max(ran, 1):.1f}%); sensor CPU {run.cpu_s:.1f}s "
        f"({100 * run.cpu_s / took:.0f}% of a core)"
    )


_WRITER = """
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    folder = os.path.join(root, f"d{i // 100}")
    if i % 100 == 0:
        os.mkdir(folder)
    with open(os.path.join(folder, f"f{i}"), "w") as f:
        f.write("x")
    with open(os.path.join(folder, f"f{i}")) as f:
        f.read()
"""


def bench_files(name: str, make: Callable[[list[str]], Sensor], count: int) -> str:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as root:
        sensor = make([root])
        with _Run(sensor) as run:
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", _WRITER, root, str(count)], check=True)
            took = time.monotonic() - started
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                seen = len(
                    {
                        e.file.path
                        for e in list(run.events)
                        if e.file.action == FileEvent.CREATED and not e.file.is_dir
                    }
                )
                if seen >= count:
                    break
                time.sleep(0.2)
    counters = getattr(sensor, "counters", {})
    return (
        f"files {name}: {count} written in {took:.1f}s; distinct creations seen {seen} "
        f"({100 * seen / count:.1f}%), overflows {counters.get('overflows', 0)}; "
        f"sensor CPU {run.cpu_s:.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--files", type=int, default=50_000)
    args = parser.parse_args()
    print(bench_execs("connector+/proc", NetlinkProcessSensor, args.seconds, args.rate))
    if not audit.unavailable():
        print(bench_execs("audit", SyscallSensor, args.seconds, args.rate))
    print(bench_files("inotify", InotifySensor, args.files))
    if fanotify_unavailable() is None:
        print(bench_files("fanotify", FanotifySensor, args.files))


if __name__ == "__main__":
    main()
