"""A cgroup per worker, where the host can make one: limits the kernel counts, and one kill.

What a worker starts stays in its cgroup whatever it does (``setsid``, a double fork), so when
the worker ends, everything it left behind is found there and killed. The memory controller
counts what the resident-memory watcher cannot see (a memfd written but never mapped, tmpfs
pages), and the pids controller counts processes and threads as they are made, not at the
watcher's next scan. The limits are backstops above the watcher's own (which says precisely
why it kills): memory at ``memory_mb`` + 256 MiB, pids at ``processes`` + 128 (threads count).

The cpu controller, where the machine has one, bounds the worker to ``cpu_cores`` at all times,
a batch in hand or not: the kernel throttles a plugin that burns cores while it holds a batch,
which the watcher (which judges CPU only while idle) leaves to the batch deadline. Its CPU usage
is read from the cgroup too (``cpu.stat``, or v1 ``cpuacct.usage``): what the worker and all
it started used, in one read, whatever the number of processes on the machine.

cgroup v2 is used when its hierarchy has the memory and pids controllers; otherwise the v1
hierarchies, which is what this project's machines mount. Where neither can be written (not
root, no delegation), there are no cgroups: the host says so once, by name, and falls back to
killing the descendants its watcher saw. A machine without a cpu controller has no CPU bound:
``Cgroups.cpu_unavailable`` says why, and the host reports the layer ``cpu`` missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from agent_host.host.limits import DATA_HEADROOM_MIB, MIB, THREAD_HEADROOM
from agent_host.host.manifest import Limits

log = structlog.get_logger("agent_host")

ROOT: Final = Path("/sys/fs/cgroup")
_KILL_ROUNDS: Final = 50
#: The period of the CPU bound: a worker over its quota waits at most this long to run again.
CPU_PERIOD_US: Final = 100_000
_instances = itertools.count(1)


def _own_path(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller`` ("" for v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (not controller and number == "0"):
            return path
    raise LookupError(controller)


@dataclass(frozen=True, slots=True)
class WorkerCgroup:
    """The cgroup(s) of one worker: each controller's directory (v2: all the same one)."""

    by_controller: Mapping[str, Path]
    version: int

    @property
    def directories(self) -> list[Path]:
        return list(dict.fromkeys(self.by_controller.values()))

    def add(self, pid: int) -> None:
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def cpu_seconds(self) -> float | None:
        """CPU time used by every process the cgroup ever held (None: not counted)."""
        directory = self.by_controller.get("cpuacct")
        if directory is None:
            return None
        if self.version == 1:
            with contextlib.suppress(OSError, ValueError):
                return int((directory / "cpuacct.usage").read_text()) / 1e9
            return None
        usec = _keyed(directory / "cpu.stat", "usage_usec")
        return None if usec is None else usec / 1e6

    def oom_kills(self) -> int:
        """How many processes the kernel killed for this cgroup's memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(self.by_controller["memory"] / name, "oom_kill") or 0

    def kill_all(self) -> int:
        """SIGKILL every process left in the cgroup, until none is; return how many."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.directories[0] / "cgroup.kill").write_text("1")
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):  # a fork racing the kill is bounded by pids.max
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= left
            time.sleep(0.002)
        return len(killed)

    def remove(self) -> None:
        for directory in self.directories:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _keyed(path: Path, wanted: str) -> int | None:
    """The value of ``wanted`` in a cgroup file of "key value" lines (None: absent)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == wanted:
                return int(value)
    return None


def _leftover(directory: Path, version: int) -> WorkerCgroup:
    return WorkerCgroup({"pids": directory}, version)


class Cgroups:
    """Makes a cgroup per worker under one cgroup of this host's own."""

    def __init__(self, root: Path = ROOT) -> None:
        self.version = 0
        #: Why there are no cgroups, when there are none (said once, at start).
        self.unavailable = ""
        #: Why there is no CPU bound, when there are cgroups but no cpu controller.
        self.cpu_unavailable = ""
        self._bases: dict[str, Path] = {}
        # One per Cgroups, not per process: a validation host beside the host has its own,
        # and closing it must not touch the host's workers.
        name = f"agent-host-{os.getpid()}-{next(_instances)}"
        try:
            self._bases = self._find(root, name)
            for base in dict.fromkeys(self._bases.values()):
                self._remove_stale(base.parent)
                base.mkdir(exist_ok=True)
            if self.version == 2:
                wanted = "+memory +pids" + (" +cpu" if "cpu" in self._bases else "")
                (self._bases["memory"] / "cgroup.subtree_control").write_text(wanted)
        except (OSError, LookupError, ValueError) as exc:
            self.unavailable = getattr(exc, "strerror", None) or str(exc)
            self.version = 0
            self._bases = {}
        if self._bases and "cpu" not in self._bases:
            self.cpu_unavailable = "no cpu cgroup controller mounted"

    def _find(self, root: Path, name: str) -> dict[str, Path]:
        """Each controller's folder for this host's cgroups; the version found in passing."""
        v2_controllers = set()
        with contextlib.suppress(OSError):
            v2_controllers = set((root / "cgroup.controllers").read_text().split())
        if {"memory", "pids"} <= v2_controllers:
            self.version = 2
            base = root / _own_path("").lstrip("/") / name
            # cpu.stat's usage counts without the cpu controller; the bound needs it.
            named = {"memory": base, "pids": base, "cpuacct": base}
            return named | ({"cpu": base} if "cpu" in v2_controllers else {})
        mounted = [c for c in ("memory", "pids", "cpu", "cpuacct") if (root / c).is_dir()]
        if not {"memory", "pids"} <= set(mounted):
            raise OSError("no memory and pids controllers mounted")
        self.version = 1
        found = {c: root / c / _own_path(c).lstrip("/") / name for c in mounted}
        if "cpu" in found and not (found["cpu"].parent / "cpu.cfs_quota_us").exists():
            del found["cpu"]  # a cpu hierarchy without CFS bandwidth control bounds nothing
        return found

    @property
    def available(self) -> bool:
        return bool(self._bases)

    def _remove_stale(self, parent: Path) -> None:
        """Remove the (empty) cgroups left by hosts that are gone."""
        for old in parent.glob("agent-host-*"):
            pid = old.name.removeprefix("agent-host-").split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                for child in sorted(old.glob("*/"), reverse=True):
                    _leftover(child, self.version).kill_all()
                    with contextlib.suppress(OSError):
                        child.rmdir()
                with contextlib.suppress(OSError):
                    old.rmdir()

    def for_worker(self, name: str, limits: Limits) -> WorkerCgroup | None:
        """A new cgroup for one worker with ``limits``; None if there are no cgroups."""
        if not self._bases:
            return None
        cgroup = WorkerCgroup({c: base / name for c, base in self._bases.items()}, self.version)
        for directory in cgroup.directories:
            directory.mkdir(exist_ok=True)
        where = cgroup.by_controller
        memory = (limits.memory_mb + DATA_HEADROOM_MIB) * MIB
        pids = limits.processes + THREAD_HEADROOM
        quota = max(1000, round(limits.cpu_cores * CPU_PERIOD_US))
        if self.version == 2:
            (where["memory"] / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (where["memory"] / "memory.swap.max").write_text("0")
            (where["pids"] / "pids.max").write_text(str(pids))
            if "cpu" in where:
                (where["cpu"] / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        else:
            (where["memory"] / "memory.limit_in_bytes").write_text(str(memory))
            (where["pids"] / "pids.max").write_text(str(pids))
            if "cpu" in where:
                (where["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (where["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        return cgroup

    def place(self, name: str, limits: Limits, pid: int) -> WorkerCgroup | None:
        """``for_worker``, with ``pid`` moved into it."""
        cgroup = self.for_worker(name, limits)
        if cgroup is not None:
            cgroup.add(pid)
        return cgroup

    def close(self) -> None:
        for base in dict.fromkeys(self._bases.values()):
            for child in base.glob("*/"):
                _leftover(child, self.version).kill_all()
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
