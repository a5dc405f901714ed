"""The operator's control socket: the ``Control`` service of ``protos/``, on a Unix socket only
the host's own user can open (0600, in its state folder, which is 0700).

``Status`` reads the host's accounts as they are; ``Tail`` streams findings as they are written,
through a bounded queue per client that drops its oldest when a client is slow (the host never
waits for a reader; the drops are counted in ``Status``); ``Release`` lifts a quarantine and
starts the plugin again at once, on probation.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import grpc
import structlog

from agent_host import __version__
from agent_host.host.lifecycle import Phase
from agent_host.host.runner import PluginRunner
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import (
    ControlServicer,
    Finding,
    HostStatus,
    PluginStatus,
    RefusedPlugin,
    ReleaseReply,
    ReleaseRequest,
    RestartReply,
    RestartRequest,
    StatusReply,
    StatusRequest,
    TailRequest,
    add_ControlServicer_to_server,
)

log = structlog.get_logger("agent_host")

#: Findings a ``tail`` client may be behind before it loses the oldest.
TAIL_QUEUE: Final = 1024
#: ``tail`` clients at once.
MAX_TAILS: Final = 8
#: Samples of the accepted count (one a second) the event rate is taken over.
_RATE_SAMPLES: Final = 11


def plugin_status(sup: Supervisor, runner: PluginRunner) -> PluginStatus:
    s = runner.stats
    return PluginStatus(
        name=runner.name,
        version=runner.manifest.version,
        state=runner.phase.value,
        reason=runner.retired or runner.reason,
        events_delivered=s.delivered,
        events_processed=s.processed,
        events_redelivered=s.redelivered,
        events_dead_lettered=s.dead_lettered,
        events_failed=s.errors,
        events_undelivered=s.undelivered,
        findings=s.findings,
        restarts=sum(s.restarts.values()),
        restarts_by_cause=dict(s.restarts),
        measurement=runner.content.measurement,
        sandbox_layers=[layer.name for layer in sup.layers_of(runner) if layer.active],
        shadow=runner in sup.rollout.candidates,
        signer=runner.signer,
    )


class ControlService(ControlServicer):
    def __init__(self, sup: Supervisor, sensor_dropped: dict[str, int] | None = None) -> None:
        self._sup = sup
        self._sensor_dropped = sensor_dropped
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=_RATE_SAMPLES)
        self._tails: set[asyncio.Queue[Finding]] = set()
        self.tail_dropped = 0
        sup.findings.listeners.append(self._written)

    def sample(self) -> None:
        """Note the accepted count (the server's sampler calls this once a second)."""
        self._samples.append((time.monotonic(), self._sup.accepted))

    def _rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _written(self, findings: Sequence[Finding]) -> None:
        for queue in self._tails:
            for finding in findings:
                if queue.full():
                    queue.get_nowait()  # the oldest goes: a slow reader never holds the host
                    self.tail_dropped += 1
                queue.put_nowait(finding)

    async def Status(  # noqa: N802 (the name is the RPC's)
        self, request: StatusRequest, context: grpc.aio.ServicerContext[StatusRequest, StatusReply]
    ) -> StatusReply:
        sup = self._sup
        host = HostStatus(
            uptime_s=time.monotonic() - self._started,
            events_accepted=sup.accepted,
            events_per_s=self._rate(),
            backlog_batches=sum(len(g.backlog) for g in sup.groups.values()),
            findings_written=sup.findings.written,
            findings_lost=sup.findings.lost,
            events_without_kind=sup.rejected_events,
            sensor_dropped=dict(self._sensor_dropped or {}),
            tail_dropped=self.tail_dropped,
            version=__version__,
            signatures=sup.config.signatures.value,
        )
        refused = [
            RefusedPlugin(name=n, reason=r) for n, r in sorted(sup.admission.refused.items())
        ]
        return StatusReply(
            plugins=[plugin_status(sup, r) for r in sup.runners], host=host, refused=refused
        )

    async def Tail(  # noqa: N802
        self, request: TailRequest, context: grpc.aio.ServicerContext[TailRequest, Finding]
    ) -> AsyncIterator[Finding]:
        if len(self._tails) >= MAX_TAILS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_TAILS} tails already")
        queue: asyncio.Queue[Finding] = asyncio.Queue(TAIL_QUEUE)
        self._tails.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._tails.discard(queue)

    async def Release(  # noqa: N802
        self,
        request: ReleaseRequest,
        context: grpc.aio.ServicerContext[ReleaseRequest, ReleaseReply],
    ) -> ReleaseReply:
        runner = self._sup.plugins.get(request.plugin)
        if runner is None:
            return ReleaseReply(released=False, message=f"no plugin {request.plugin!r} runs here")
        if runner.phase is not Phase.QUARANTINED:
            return ReleaseReply(released=False, message=f"{runner.name} is {runner.phase.value}")
        runner.release_now()
        log.info("quarantine lifted by the operator", plugin=runner.name)
        return ReleaseReply(released=True, message=f"{runner.name} starts again, on probation")

    async def Restart(  # noqa: N802
        self,
        request: RestartRequest,
        context: grpc.aio.ServicerContext[RestartRequest, RestartReply],
    ) -> RestartReply:
        runner = self._sup.plugins.get(request.plugin)
        if runner is None:
            return RestartReply(restarted=False, message=f"no plugin {request.plugin!r} runs here")
        if runner.phase is Phase.QUARANTINED:
            why = "quarantined: agent-host plugins release lifts it"
            return RestartReply(restarted=False, message=f"{runner.name} is {why}")
        if runner.phase not in (Phase.STARTING, Phase.RUNNING, Phase.BACKING_OFF):
            return RestartReply(restarted=False, message=f"{runner.name} is {runner.phase.value}")
        runner.restart_now()
        log.info("plugin restart asked by the operator", plugin=runner.name)
        return RestartReply(restarted=True, message=f"{runner.name} restarts on a new worker")


class ControlServer:
    """Serves ``ControlService`` on ``socket_path`` (0600) while the host runs."""

    def __init__(self, service: ControlService, socket_path: Path) -> None:
        self.service = service
        self.socket_path = socket_path
        self._server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 16)])
        add_ControlServicer_to_server(service, self._server)
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)  # a dead host's
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        await self._server.start()
        self.socket_path.chmod(0o600)
        self._sampler = asyncio.ensure_future(self._sample())
        log.info("control socket", path=str(self.socket_path))

    async def _sample(self) -> None:
        while True:
            self.service.sample()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await self._server.stop(0.5)
        self.socket_path.unlink(missing_ok=True)
