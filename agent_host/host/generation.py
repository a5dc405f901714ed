"""One worker generation: the process a runner started, and everything that lives and dies with it.

A plugin's runner outlives its workers; each spawn begins a new generation. The generation holds
the process (``child.py``: secret, limits, cgroup, broker), the gRPC session task that serves it,
the tasks relaying its output, when it was last heard from, and which faults were already
reported for it. It signals, escalates and kills; when the process exits it clears what the
worker left behind and hands the exit to the runner. It decides nothing: what to do about an
exit is the runner's (and its lifecycle's) question. osquery keeps a child's state the same way,
in a ``Watcher`` apart from the ``WatcherRunner`` that decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import psutil
import structlog

from agent_host.host import lifecycle as lc
from agent_host.host.child import Child, Exit
from agent_host.host.delivery import Delivery
from agent_host.host.limits import Deadlines
from agent_host.host.output import relay_output

#: How long a stopped worker's output may take to reach its end of file.
RELAY_DRAIN_S: Final = 1.0

Logger = structlog.typing.FilteringBoundLogger


class WorkerGeneration:
    """Worker process number ``number`` of one plugin, from its spawn to its reaping."""

    def __init__(
        self,
        number: int,
        child: Child,
        plugin: str,
        *,
        log: Logger,
        on_exit: Callable[[WorkerGeneration, Exit], None],
    ) -> None:
        self.number: Final = number
        self.child: Final = child
        self.log: Final = log.bind(pid=child.pid)
        #: When the worker last sent anything (heartbeats are judged by this).
        self.last_heard = time.monotonic()
        #: A fault (deadline, limit) was reported for this worker: one is enough.
        self.fault_reported = False
        #: Its probation was reported served.
        self.probation_reported = False
        #: The task serving its gRPC session, once it connected.
        self.session_task: asyncio.Task[None] | None = None
        self._plugin = plugin
        self._on_exit = on_exit
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The tasks relaying its stdout and stderr: they end at the pipe's end of file.
        self._relays: set[asyncio.Task[Any]] = set()

    def begin(self) -> None:
        """Relay the worker's output to the host's log and watch for its exit."""
        proc = self.child.process
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                self._relays.add(
                    self._background(relay_output(stream, self._plugin, proc.pid, name))
                )
        self._background(self._watch())

    @property
    def pid(self) -> int:
        return self.child.pid

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def claim(self, worker_id: str, token: bytes) -> bool:
        """Whether ``token`` is this spawn's secret (which opens one session only)."""
        return self.child.claim(worker_id, token)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what the host's watchdog finds ---------------------------------------------------

    def judge(
        self, now: float, life: lc.Lifecycle, deadlines: Deadlines, delivery: Delivery
    ) -> lc.Input | None:
        """A deadline passed, or a probation served; each is found once per worker."""
        if life.death is not None or self.fault_reported:
            return None
        overdue = deadlines.overdue(
            self.number,
            now,
            phase=life.phase,
            last_heard=self.last_heard,
            head=delivery.head(),
            head_since=delivery.head_since,
        )
        if overdue is not None:
            self.fault_reported = True
            return overdue
        if (
            life.on_probation
            and not self.probation_reported
            and life.phase is lc.Phase.RUNNING
            and life.running_since is not None
            and now - life.running_since >= life.policy.probation_s
        ):
            self.probation_reported = True
            return lc.ProbationPassed(self.number)
        return None

    def measure(
        self, now: float, life: lc.Lifecycle, idle: bool, descendants: list[psutil.Process]
    ) -> lc.Input | None:
        """A resource limit exceeded (memory, CPU while idle, processes), found once."""
        monitor = self.child.monitor
        if monitor is None or life.death is not None or life.phase is not lc.Phase.RUNNING:
            return None
        monitor.set_descendants(descendants)
        cgroup = self.child.cgroup
        verdict = monitor.sample(
            now, idle=idle, cgroup_cpu=cgroup.cpu_seconds() if cgroup is not None else None
        )
        if verdict is None or self.fault_reported:
            return None
        self.fault_reported = True
        return lc.LimitExceeded(self.number, verdict)

    def cgroup_members(self) -> list[psutil.Process] | None:
        """The other processes of its cgroup: whatever it started, double forks and orphans
        included (None without a cgroup). Read from the cgroup alone: the cost follows this
        worker, not the number of processes on the machine."""
        cgroup = self.child.cgroup
        if cgroup is None:
            return None
        members = []
        for pid in cgroup.pids() - {self.pid}:
            with contextlib.suppress(psutil.Error):
                members.append(psutil.Process(pid))
        return members

    @property
    def peak_rss_mib(self) -> float:
        return self.child.monitor.peak_rss_mib if self.child.monitor else 0.0

    # -- signals -------------------------------------------------------------------------

    def terminate(self, grace_s: float) -> bool:
        """SIGTERM the worker's group, SIGKILL after ``grace_s``; False if it has exited."""
        if not self.child.running:
            return False
        self.child.signal_group(signal.SIGTERM)
        self._background(self._escalate(grace_s))
        return True

    async def _escalate(self, grace_s: float) -> None:
        if await self.child.kill_after(grace_s):
            self.log.warning("worker ignored SIGTERM; killing it", grace_s=grace_s)

    def kill(self) -> None:
        """SIGKILL the worker's group at once."""
        self.child.signal_group(signal.SIGKILL)

    # -- the end -------------------------------------------------------------------------

    async def _watch(self) -> None:
        exit = await self.child.reap()
        if exit.leftovers:
            self.log.warning("killed what the worker left behind", processes=exit.leftovers)
        session = self.session_task
        if session is not None and not session.done():
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
        await self._drain_relays()  # all it wrote is in the log before its exit is handled
        self._on_exit(self, exit)

    async def _drain_relays(self) -> None:
        relays = {t for t in self._relays if not t.done()}
        if relays:
            _, late = await asyncio.wait(relays, timeout=RELAY_DRAIN_S)
            for task in late:
                task.cancel()

    async def close(self) -> None:
        """Cancel its tasks (after it exited, or when the host aborts).

        The output relays are let run to their pipe's end of file (the worker is gone, so it
        comes at once): a relay cancelled before it would leave the pipe open.
        """
        await self._drain_relays()
        for task in list(self._tasks):
            if not task.done() and task is not self.session_task:
                task.cancel()
