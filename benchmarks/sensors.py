"""What each live sensor sustains on real activity.

    python -m benchmarks.sensors [--processes 2000] [--files 5000] [--connections 500]

- process: short-lived processes (fork + exec of `true`) started as fast as two threads can;
  the share whose exec the sensor reported, and events per second over the burst;
- file: files created and written in a watched folder, as fast as one thread can;
- network: connections opened on loopback and held for two polls; the share seen, and the cost
  of one poll of the socket tables.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import threading
import time

from agent_host.protocol import Event, FileEvent, NetworkEvent, ProcessEvent
from agent_host.sources.live.base import Sensor
from agent_host.sources.live.file import FileSensor
from agent_host.sources.live.network import NetworkSensor
from agent_host.sources.live.process import describe, process_sensor


class _Run:
    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.events: list[tuple[float, Event]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=sensor.run, args=(self._emit, self._stop), daemon=True
        )

    def _emit(self, event: Event) -> None:
        self.events.append((time.perf_counter(), event))

    def __enter__(self) -> _Run:
        self._thread.start()
        self.sensor.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def bench_processes(n: int) -> str:
    sensor = process_sensor(0.05)
    pids: list[int] = []
    lock = threading.Lock()

    def spawn(count: int) -> None:
        for _ in range(count):
            proc = subprocess.Popen(["true"])
            proc.wait()
            with lock:
                pids.append(proc.pid)

    with _Run(sensor) as run:
        started = time.perf_counter()
        threads = [threading.Thread(target=spawn, args=(n // 2,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spawned = time.perf_counter() - started
        time.sleep(1.0)
    wanted = set(pids)
    seen = {
        e.process.pid
        for _, e in run.events
        if e.process.action == ProcessEvent.START and e.process.pid in wanted
    }
    last = max((t for t, e in run.events if e.process.pid in wanted), default=started)
    own = time.perf_counter()
    for _ in range(1000):
        describe(os.getpid())
    per_exec = (time.perf_counter() - own) / 1000
    return (
        f"process ({type(sensor).__name__}): enriching one exec from /proc takes "
        f"{per_exec * 1e6:.0f} us (a ceiling of ~{1 / per_exec:,.0f} execs/s); "
        f"{len(seen)}/{len(wanted)} short-lived "
        f"processes seen ({100 * len(seen) / len(wanted):.1f}%), {len(run.events)} events "
        f"in {last - started:.2f}s = {len(run.events) / (last - started):,.0f} events/s "
        f"(spawning took {spawned:.2f}s)"
    )


def bench_files(n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp, _Run(FileSensor([tmp])) as run:
        started = time.perf_counter()
        for i in range(n):
            with open(os.path.join(tmp, f"f{i}"), "w") as f:
                f.write("x")
        wrote = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while len(run.events) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.05)
        last = max(t for t, _ in run.events)
    created = sum(1 for _, e in run.events if e.file.action == FileEvent.CREATED)
    return (
        f"file: {created}/{n} creations seen, {len(run.events)} events in "
        f"{last - started:.2f}s = {len(run.events) / (last - started):,.0f} events/s "
        f"(writing took {wrote:.2f}s)"
    )


def bench_network(n: int) -> str:
    sensor = NetworkSensor(interval_s=0.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(n)
    port = server.getsockname()[1]
    polls = []
    for _ in range(5):
        t = time.perf_counter()
        sensor._snapshot()  # the cost of one poll is what we measure
        polls.append(time.perf_counter() - t)
    with _Run(sensor) as run:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        accepted = [server.accept()[0] for _ in range(n)]
        time.sleep(1.2)
        for s in clients + accepted:
            s.close()
    server.close()
    connects = sum(
        1
        for _, e in run.events
        if e.network.action == NetworkEvent.CONNECT and e.network.remote_port == port
    )
    return (
        f"network: {connects}/{n} connections seen (held 1.2 s, polled every 0.5 s); "
        f"one poll of the socket tables takes {1000 * min(polls):.1f} ms; a connection that "
        f"lives less than one poll interval may be missed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2000)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    print(bench_processes(args.processes))
    print(bench_files(args.files))
    print(bench_network(args.connections))


if __name__ == "__main__":
    main()
