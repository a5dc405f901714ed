"""Limits: deadlines, and what each worker uses, measured from outside, against its manifest.

Deadlines (``Deadlines``): a start that takes too long, a batch not done within the manifest's
``batch_deadline_s``, an idle worker that stops sending heartbeats.

The kernel enforces hard backstops (rlimits, set by the host with prlimit so that plugin code
never decides them); this watcher enforces the real limits with precise verdicts, in the manner
of osquery's watchdog, and reports usage:

- memory: resident memory of the worker and what it started (the other processes of its
  cgroup; where no cgroup could be made, its descendants, from a scan of the machine);
- cpu: CPU used while the worker is idle (no batch in hand), over a sliding window, as its
  cgroup counted it where it has one. A busy worker is bounded by its batch deadline and by
  its cpu cgroup's quota (``cpu_cores``) instead, so that a long replay never gets a healthy
  plugin killed for working hard, and a plugin that burns cores while it holds a batch is
  throttled by the kernel. Where the machine has no cpu controller, this watcher holds every
  worker to ``cpu_cores`` over the window instead, busy or not, and kills it above;
- processes: the same processes (a fork bomb, or orphans of double forks, which its pid
  namespace's init adopts and a walk of descendants would miss).
"""

from __future__ import annotations

import resource
from collections import deque
from dataclasses import dataclass
from typing import Final

import psutil

from agent_host.host.fanout import Batch
from agent_host.host.lifecycle import DeadlineExceeded, HeartbeatLost, Input, Phase, Verdict
from agent_host.host.manifest import Limits

MIB: Final = 1024 * 1024
#: Headroom of the hard memory backstop over the watched limit: the interpreter and gRPC
#: reserve address space they never touch, and the watcher should be the one to say why.
DATA_HEADROOM_MIB: Final = 256
#: Threads count as tasks (RLIMIT_NPROC, pids.max): room for the interpreter's and gRPC's own.
THREAD_HEADROOM: Final = 128


@dataclass(frozen=True, slots=True)
class Deadlines:
    """When a worker is overdue, in the phase it is in."""

    start_timeout_s: float
    heartbeat_timeout_s: float
    batch_deadline_s: float

    def overdue(
        self,
        generation: int,
        now: float,
        *,
        phase: Phase,
        last_heard: float,
        head: Batch | None,
        head_since: float,
    ) -> Input | None:
        """The input to feed the lifecycle if the worker is overdue, else None."""
        if phase is Phase.STARTING:
            if now - last_heard > self.start_timeout_s:
                return DeadlineExceeded(
                    generation, Verdict("hang", f"did not start within {self.start_timeout_s:g}s")
                )
            return None
        if phase not in (Phase.RUNNING, Phase.DRAINING):
            return None
        if head is not None and now - head_since > self.batch_deadline_s:
            return DeadlineExceeded(
                generation,
                Verdict(
                    "hang",
                    f"batch of {len(head)} events not done within the "
                    f"{self.batch_deadline_s:g}s deadline",
                ),
            )
        if head is None and now - last_heard > self.heartbeat_timeout_s:
            return HeartbeatLost(
                generation, Verdict("hang", f"no heartbeat for {self.heartbeat_timeout_s:g}s")
            )
        return None


def apply_hard_limits(pid: int, limits: Limits, *, own_user: bool) -> None:
    """Set the kernel's backstops on a freshly spawned worker, before it runs plugin code.

    ``own_user``: the worker runs as a user of its own (the sandbox's identity layer), so that
    RLIMIT_NPROC, which counts every process and thread of the user, counts this plugin's
    alone. Otherwise it would count the host's user's and stop a worker from even starting its
    threads on a busy machine; the watcher and the pids cgroup count descendants instead.
    """
    proc = psutil.Process(pid)
    data = (limits.memory_mb + DATA_HEADROOM_MIB) * MIB
    proc.rlimit(resource.RLIMIT_DATA, (data, data))
    proc.rlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    proc.rlimit(resource.RLIMIT_CORE, (0, 0))
    if own_user:
        tasks = limits.processes + THREAD_HEADROOM
        proc.rlimit(resource.RLIMIT_NPROC, (tasks, tasks))


def descendants_by_root(roots: set[int]) -> dict[int, list[psutil.Process]]:
    """The descendants of each pid in ``roots``, from one scan of the process table."""
    children: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc)
    result: dict[int, list[psutil.Process]] = {}
    for root in roots:
        found: list[psutil.Process] = []
        stack = [root]
        while stack:
            for child in children.get(stack.pop(), ()):
                found.append(child)
                stack.append(child.pid)
        result[root] = found
    return result


class ResourceMonitor:
    """Samples one worker process for the limits of its plugin."""

    def __init__(self, pid: int, limits: Limits) -> None:
        self._proc = psutil.Process(pid)
        self._limits = limits
        self._descendants: list[psutil.Process] = []
        self._idle_samples: deque[tuple[float, float]] = deque()  # (wall, cpu) while idle
        self._all_samples: deque[tuple[float, float]] = deque()  # (wall, cpu), busy or idle
        self._last: tuple[float, float] | None = None
        #: Whether the kernel holds the worker to ``cpu_cores`` (its cpu cgroup). Where it
        #: does not, this watcher kills a worker above it instead, busy or not.
        self.kernel_cpu_bound = False
        self.rss_mib = 0.0
        self.peak_rss_mib = 0.0

    def set_descendants(self, procs: list[psutil.Process]) -> None:
        self._descendants = procs

    def last_descendants(self) -> list[psutil.Process]:
        """The descendants seen at the last scan: killed with the worker, even if they left its
        process group."""
        return list(self._descendants)

    def sample(self, now: float, idle: bool, cgroup_cpu: float | None = None) -> Verdict | None:
        """Measure once; return a Verdict if a limit is exceeded. ``cgroup_cpu``: the CPU
        seconds the worker's cgroup counted (then no process's own times are read)."""
        limits = self._limits
        try:
            rss = self._proc.memory_info().rss
            cpu = cgroup_cpu if cgroup_cpu is not None else _cpu_seconds(self._proc)
        except psutil.Error:
            return None  # gone: the exit is handled elsewhere
        for child in self._descendants:
            try:
                rss += child.memory_info().rss
                if cgroup_cpu is None:
                    cpu += _cpu_seconds(child)
            except psutil.Error:
                continue
        if len(self._descendants) > limits.processes:
            return Verdict(
                "processes", f"processes {len(self._descendants)} > limit {limits.processes}"
            )
        self.rss_mib = rss / MIB
        self.peak_rss_mib = max(self.peak_rss_mib, self.rss_mib)
        if self.rss_mib > limits.memory_mb:
            return Verdict(
                "memory", f"memory {self.rss_mib:.0f} MiB > limit {limits.memory_mb} MiB"
            )
        return self._cpu_verdict(now, cpu, idle)

    def _cpu_verdict(self, now: float, cpu: float, idle: bool) -> Verdict | None:
        limits = self._limits
        last, self._last = self._last, (now, cpu)
        if last is None:
            return None
        sample = (now - last[0], cpu - last[1])
        if not self.kernel_cpu_bound:
            percent = _windowed(self._all_samples, sample, limits.cpu_window_s)
            if percent is not None and percent > 100.0 * limits.cpu_cores:
                return Verdict(
                    "cpu",
                    f"cpu {percent:.0f}% > cpu_cores {limits.cpu_cores:g} over "
                    f"{limits.cpu_window_s:g}s (no cpu cgroup to hold it there)",
                )
        if not idle:
            return None
        percent = _windowed(self._idle_samples, sample, limits.cpu_window_s)
        if percent is not None and percent > limits.cpu_percent:
            return Verdict(
                "cpu",
                f"cpu {percent:.0f}% while idle > limit "
                f"{limits.cpu_percent:g}% over {limits.cpu_window_s:g}s",
            )
        return None


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _windowed(
    samples: deque[tuple[float, float]], sample: tuple[float, float], window_s: float
) -> float | None:
    """Add ``sample`` (wall, cpu); the CPU percent over the last ``window_s`` of samples, or None
    while less than that has been seen."""
    samples.append(sample)
    total_wall = sum(w for w, _ in samples)
    while samples and total_wall - samples[0][0] >= window_s:
        total_wall -= samples.popleft()[0]
    if total_wall < window_s:
        return None
    return 100.0 * sum(c for _, c in samples) / total_wall
