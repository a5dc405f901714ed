"""A cgroup per worker, where the host can make one: limits the kernel counts, and one kill.

What a worker starts stays in its cgroup whatever it does (``setsid``, a double fork), so when
the worker ends, everything it left behind is found there and killed. The memory controller
counts what the resident-memory watcher cannot see (a memfd written but never mapped, tmpfs
pages), and the pids controller counts processes and threads as they are made, not at the
watcher's next scan. The limits are backstops above the watcher's own (which says precisely
why it kills): memory at ``memory_mb`` + 256 MiB, pids at ``processes`` + 128 (threads count).

cgroup v2 is used when its hierarchy has the memory and pids controllers; otherwise the v1
memory and pids hierarchies, which is what this project's machines mount. Where neither can be
written (not root, no delegation), there are no cgroups: the host says so once, by name, and
falls back to killing the descendants its watcher saw.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from agent_host.host.limits import DATA_HEADROOM_MIB, MIB, THREAD_HEADROOM
from agent_host.host.manifest import Limits

log = structlog.get_logger("agent_host")

ROOT: Final = Path("/sys/fs/cgroup")
_KILL_ROUNDS: Final = 50
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
    """The cgroup(s) of one worker: one directory (v2) or one per controller (v1)."""

    directories: tuple[Path, ...]
    version: int

    def add(self, pid: int) -> None:
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel killed for this cgroup's memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for directory in self.directories:
            path = directory / name
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

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


class Cgroups:
    """Makes a cgroup per worker under one cgroup of this host's own."""

    def __init__(self, root: Path = ROOT) -> None:
        self.version = 0
        #: Why there are no cgroups, when there are none (said once, at start).
        self.unavailable = ""
        self._bases: list[Path] = []
        # One per Cgroups, not per process: a validation host beside the host has its own,
        # and closing it must not touch the host's workers.
        name = f"agent-host-{os.getpid()}-{next(_instances)}"
        try:
            if (root / "cgroup.controllers").is_file() and {"memory", "pids"} <= set(
                (root / "cgroup.controllers").read_text().split()
            ):
                self._bases = [root / _own_path("").lstrip("/") / name]
                self.version = 2
            elif (root / "memory").is_dir() and (root / "pids").is_dir():
                self._bases = [
                    root / c / _own_path(c).lstrip("/") / name for c in ("memory", "pids")
                ]
                self.version = 1
            else:
                raise OSError("no memory and pids controllers mounted")
            for base in self._bases:
                self._remove_stale(base.parent)
                base.mkdir(exist_ok=True)
            if self.version == 2:
                (self._bases[0] / "cgroup.subtree_control").write_text("+memory +pids")
        except (OSError, LookupError, ValueError) as exc:
            self.unavailable = getattr(exc, "strerror", None) or str(exc)
            self.version = 0
            self._bases = []

    @property
    def available(self) -> bool:
        return bool(self._bases)

    def _remove_stale(self, parent: Path) -> None:
        """Remove the (empty) cgroups left by hosts that are gone."""
        for old in parent.glob("agent-host-*"):
            pid = old.name.removeprefix("agent-host-").split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                for child in sorted(old.glob("*/"), reverse=True):
                    WorkerCgroup((child,), self.version).kill_all()
                    with contextlib.suppress(OSError):
                        child.rmdir()
                with contextlib.suppress(OSError):
                    old.rmdir()

    def for_worker(self, name: str, limits: Limits) -> WorkerCgroup | None:
        """A new cgroup for one worker with ``limits``; None if there are no cgroups."""
        if not self._bases:
            return None
        directories = tuple(base / name for base in self._bases)
        memory = (limits.memory_mb + DATA_HEADROOM_MIB) * MIB
        pids = limits.processes + THREAD_HEADROOM
        for directory in directories:
            directory.mkdir(exist_ok=True)
        if self.version == 2:
            (directories[0] / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (directories[0] / "memory.swap.max").write_text("0")
            (directories[0] / "pids.max").write_text(str(pids))
        else:
            (directories[0] / "memory.limit_in_bytes").write_text(str(memory))
            (directories[1] / "pids.max").write_text(str(pids))
        return WorkerCgroup(directories, self.version)

    def place(self, name: str, limits: Limits, pid: int) -> WorkerCgroup | None:
        """``for_worker``, with ``pid`` moved into it."""
        cgroup = self.for_worker(name, limits)
        if cgroup is not None:
            cgroup.add(pid)
        return cgroup

    def close(self) -> None:
        for base in self._bases:
            for child in base.glob("*/"):
                WorkerCgroup((child,), self.version).kill_all()
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
