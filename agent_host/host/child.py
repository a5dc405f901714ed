"""One worker process as the host holds it: started with its secret, limits and cgroup,
signalled, and, once it exits, cleared of everything it left behind.

Its limits and cgroup are set before it is handed its secret: until then it waits on its stdin
and runs no plugin code. A secret opens one session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import uuid
from dataclasses import dataclass

import psutil
import structlog

from agent_host.host.broker import FileBroker
from agent_host.host.cgroups import Cgroups, WorkerCgroup
from agent_host.host.limits import ResourceMonitor, apply_hard_limits
from agent_host.host.manifest import Manifest
from agent_host.host.sandbox import WorkerSandbox
from agent_host.host.spawn import Spawner, WorkerProcess
from agent_host.protocol import SECRET_BYTES


@dataclass(frozen=True, slots=True)
class Exit:
    """How a worker ended, as far as the host can tell from outside."""

    returncode: int
    #: Processes it left behind that were killed.
    leftovers: int
    #: Whether the kernel killed a process of its cgroup for the cgroup's memory limit.
    oom_killed: bool


class Child:
    """The current worker process of one plugin."""

    def __init__(
        self,
        process: WorkerProcess,
        worker_id: str,
        token: bytes,
        monitor: ResourceMonitor | None,
        cgroup: WorkerCgroup | None,
        *,
        broker: FileBroker,
    ) -> None:
        self.process = process
        self.broker = broker
        self.worker_id = worker_id
        self._token = token
        self.monitor = monitor
        self._cgroup = cgroup

    @classmethod
    async def start(
        cls,
        spawner: Spawner,
        sandbox: WorkerSandbox,
        manifest: Manifest,
        cgroups: Cgroups | None,
        log: structlog.typing.FilteringBoundLogger,
    ) -> Child:
        """Start a worker for ``manifest`` and hand it a fresh secret; raises OSError."""
        worker_id = uuid.uuid4().hex
        token = secrets.token_bytes(SECRET_BYTES)
        args = ["--socket", str(sandbox.socket_path), "--worker-id", worker_id]
        args += ["--sandbox", sandbox.policy_argument()]
        broker = FileBroker(manifest.permissions.read)
        try:
            proc = await spawner.spawn(args, sandbox.content.copy, broker.worker_fd)
        except BaseException:
            broker.close()
            raise
        broker.handed_over()
        log = log.bind(pid=proc.pid)
        monitor = None
        try:  # the worker sets them itself before it drops its privileges ("rlimits" layer)
            apply_hard_limits(proc.pid, manifest.limits, own_user=os.geteuid() == 0)
        except psutil.Error as exc:
            log.debug("limits left to the worker to set", error=str(exc))
        try:
            monitor = ResourceMonitor(proc.pid, manifest.limits)
        except psutil.Error as exc:
            log.warning("worker not watched for its resources", error=str(exc))
        cgroup = None
        if cgroups is not None:
            try:
                # In a thread: moving a process into a v1 cgroup waits for an RCU grace
                # period (several ms), which must not stall the other plugins' events.
                cgroup = await asyncio.to_thread(
                    cgroups.place, worker_id, manifest.limits, proc.pid
                )
            except OSError as exc:
                log.error("worker runs without its cgroup", error=exc.strerror or str(exc))
                cgroup = None
        if monitor is not None and cgroup is not None:
            monitor.kernel_cpu_bound = "cpu" in cgroup.by_controller
        assert proc.stdin is not None
        proc.stdin.write(token)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return cls(proc, worker_id, token, monitor, cgroup, broker=broker)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def cgroup(self) -> WorkerCgroup | None:
        """Its cgroup, where the host could make one (None: its descendants are found by a scan
        of the machine's processes)."""
        return self._cgroup

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def claim(self, worker_id: str, token: bytes) -> bool:
        """Whether ``token`` is this spawn's secret; a secret opens one session only."""
        if (
            not self._token
            or worker_id != self.worker_id
            or not secrets.compare_digest(token, self._token)
        ):
            return False
        self._token = b""
        return True

    def signal_group(self, signum: signal.Signals) -> None:
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def kill_after(self, grace_s: float) -> bool:
        """SIGKILL the group if the process has not exited within ``grace_s``; True if so."""
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace_s)
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            return True
        return False

    async def reap(self) -> Exit:
        """Wait for the exit, then kill what it left: its group, the descendants the watcher
        saw (even those that left the group), and whatever is still in its cgroup."""
        returncode = await self.process.wait()
        self.broker.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.monitor is not None:
            for descendant in self.monitor.last_descendants():
                with contextlib.suppress(psutil.Error):
                    descendant.kill()
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is None:
            return Exit(returncode, 0, oom_killed=False)
        leftovers = await asyncio.to_thread(cgroup.kill_all)
        oom = cgroup.oom_kills() > 0
        cgroup.remove()
        return Exit(returncode, leftovers, oom)
