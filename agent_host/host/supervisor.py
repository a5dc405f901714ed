"""The host process: owns the workers, fans events out to them, and outlives every one of them.

Life of a run::

    sup = Supervisor(config, manifests, sink)   # sink: where accepted findings are written
    await sup.start()                # socket up, one worker per plugin, wait until each is ready
    async for event in source:       # or any producer
        await sup.publish(event)     # waits only when a backlog is full
    await sup.stop()                 # deliver everything accepted, collect findings, stop workers
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, Final

import structlog

from agent_host.errors import SandboxUnavailableError
from agent_host.host.admission import Admission
from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig
from agent_host.host.facilities import Facilities
from agent_host.host.fanout import Group
from agent_host.host.findings import FindingPipeline, FindingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.limits import descendants_by_root
from agent_host.host.manifest import Manifest
from agent_host.host.reload import Reload, log_start
from agent_host.host.restart import RestartPolicy
from agent_host.host.runner import PluginRunner
from agent_host.host.runtime import make_runtime_dir, not_dumpable
from agent_host.host.sandbox import WorkerSandbox, checked_machine, for_plugin
from agent_host.host.spawn import ExecSpawner, Spawner, ZygoteSpawner, probe_sandbox
from agent_host.host.store import StateStore
from agent_host.host.suppress import Suppressions
from agent_host.host.updates.content import Admitted, remove_tree
from agent_host.host.updates.rollout import Rollout
from agent_host.protocol import (
    EVENT_KINDS,
    Event,
    EventKind,
    SandboxLayer,
    SandboxReport,
    event_kind,
    event_record,
)

log = structlog.get_logger("agent_host")

#: The watchdog's pace, and how often it measures workers, while the host is quiet.
_QUIET_TICK_S: Final = 1.0
_QUIET_SAMPLE_S: Final = 2.0
#: The phases with no deadline shorter than seconds (heartbeats, probation): quiet ones.
_SETTLED: Final = frozenset({Phase.RUNNING, Phase.QUARANTINED, Phase.FAILED, Phase.STOPPED})
#: A watchdog tick later than this past its time means the host itself was not running.
_PAUSE_TOLERANCE_S = 0.5


class Supervisor:
    """Hosts one worker per plugin and delivers every accepted event to every subscriber."""

    def __init__(
        self,
        config: HostConfig,
        manifests: Iterable[Manifest],
        sink: FindingSink,
        restart_policy: RestartPolicy | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        """
        Args:
            spawner: Where workers come from; by default the zygote (``config.zygote``), else
                a fresh interpreter each. An embedder's own is used as it is.
        """
        self.config = config
        runtime_dir = make_runtime_dir()
        try:
            self.admission = Admission(config, runtime_dir / "content")  # a bad key: UsageError
        except BaseException:
            remove_tree(runtime_dir)
            raise
        self._runtime_dir = runtime_dir
        self._hostname = config.hostname
        self.findings = FindingPipeline(
            sink, config.hostname, suppressions=Suppressions(config.suppressions, config.allowlist)
        )
        self._restart_policy = restart_policy or RestartPolicy()
        self.store = StateStore(config.state_dir)
        self._manifests = self.admission.within_caps(manifests)
        self._slots = 0
        self.groups: dict[frozenset[EventKind], Group] = {}
        self._groups_by_kind: dict[EventKind, list[Group]] = {k: [] for k in EVENT_KINDS}
        self.plugins: dict[str, PluginRunner] = {}
        #: Runners a reload took out (replaced or removed), kept for their accounts.
        self.retired: list[PluginRunner] = []
        #: Shadow trials, rejected content, last known good versions.
        self.rollout: Rollout[PluginRunner] = Rollout(self)
        self._keys: set[str] = set()
        #: Events accepted so far; the last one accepted is numbered this.
        self.accepted = 0
        #: Events with none of process, file, network: skipped, counted, reported in the summary.
        self.rejected_events = 0
        self._background: list[asyncio.Task[None]] = []
        #: Set while some event waits in a batcher: the flush timer sleeps until then.
        self._waiting = asyncio.Event()
        #: Set when an event comes in: a quiet watchdog wakes to its quick pace.
        self._active = asyncio.Event()
        self._spawner: Spawner = spawner or ExecSpawner()
        self._own_spawner = spawner is None
        self._cgroups: Cgroups | None = None
        #: What every worker's sandbox holds on this machine (known once started).
        self.sandbox = SandboxReport()
        #: Set when a task of the host's own failed (``failure`` says which and why).
        self.failed = asyncio.Event()
        self.failure = ""

    def reconfigure(self, config: HostConfig) -> None:
        """Run with ``config`` from now on (a reload's settings: the content policy, shadow
        runs). Plugins started from now on get it; the next ``reload`` admits every running
        plugin again under it, and stops those it refuses.

        Raises:
            UsageError: a trusted key cannot be read; nothing is changed.
        """
        self.admission.reconfigure(config)  # first: may fail
        self.config = config
        self.findings.suppressions = Suppressions(config.suppressions, config.allowlist)

    @property
    def refused_sessions(self) -> int:
        return sum(runner.refused_sessions for runner in self.runners)

    async def start(self) -> None:
        """Open the socket, spawn every worker, and wait until each is ready or has failed."""
        not_dumpable()
        if self.config.cgroups:
            self._cgroups = Cgroups()
        probe = ""
        if self.config.zygote and self._own_spawner:
            zygote = ZygoteSpawner()
            if await zygote.start():
                self._spawner = zygote
                probe = zygote.sandbox_probe
        self.admission.say_policy()
        try:
            self.sandbox = checked_machine(
                probe or await probe_sandbox(), self._cgroups, self.config
            )
        except SandboxUnavailableError:
            await self._spawner.close()
            remove_tree(self._runtime_dir)
            self.store.close()
            raise
        for manifest in self._manifests:
            runner = self.runner_for(manifest)
            if runner is not None:
                self.install(runner)
        self._background.append(self._keep(self._watch_workers(), "watchdog"))
        for runner in self.plugins.values():
            runner.start()
        await asyncio.gather(*(r.wait_started() for r in self.plugins.values()))
        self._background.append(self._keep(self._flush_periodically(), "flush timer"))
        for runner in self.plugins.values():
            log_start(runner)
            if self._last_recorded(runner.name) != runner.content.measurement:
                self.record(runner, "running", "a version not seen before")

    def _last_recorded(self, name: str) -> str:
        """The measurement last written in the plugin's history ("" if none)."""
        try:
            return self.store.last_measurement(name)
        except sqlite3.Error:
            return ""

    def record(
        self, runner: PluginRunner | Manifest, what: str, detail: str = "", *, measurement: str = ""
    ) -> None:
        """A line in the plugin's history; its failure is the host's, logged, never fatal."""
        manifest = runner.manifest if isinstance(runner, PluginRunner) else runner
        if isinstance(runner, PluginRunner):
            measurement = runner.content.measurement
        try:
            self.store.record(manifest.name, manifest.version, measurement, what, detail)
        except (sqlite3.Error, OSError) as exc:
            log.error("could not write state", what="history", error=str(exc))

    def _keep(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of the host's own that may not die silently: if it fails, the host cannot
        keep its promises (no deadline would be checked without the watchdog), so the failure
        is logged with its traceback and ``failed`` is set for the caller to stop on."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failure = f"host task {name} failed: {type(exc).__name__}: {exc}"
                log.exception("host task failed; the host must stop", task=name)
                self.failed.set()

        return asyncio.create_task(guarded())

    def _note_waiting(self) -> None:
        self._waiting.set()
        self._active.set()

    def layers_of(self, runner: PluginRunner) -> list[SandboxLayer]:
        return for_plugin(self.sandbox, runner.manifest)

    def _group_for(self, kinds: frozenset[EventKind]) -> Group:
        group = self.groups.get(kinds)
        if group is None:
            group = Group(
                kinds, self.config.batch_size, self.config.backlog_batches, self._note_waiting
            )
            self.groups[kinds] = group
            for kind in kinds:
                self._groups_by_kind[kind].append(group)
        return group

    def runner_for(
        self, manifest: Manifest, admitted: Admitted | None = None
    ) -> PluginRunner | None:
        """A runner over the plugin's admitted content; None if it is refused."""
        admitted = admitted or self.admission.admit(manifest)
        if admitted is None:
            return None
        runner = PluginRunner(
            manifest,
            self._group_for(manifest.subscribe),
            self._facilities(),
            content=admitted.content,
            signer=admitted.signer,
            sandbox=self._sandbox_for(manifest, admitted),
            quarantine=self.store.quarantine_of(manifest.name, manifest.version),
            key=self._key_for(manifest.name),
        )
        runner.on_failure = self.rollout.on_failure
        return runner

    def _facilities(self) -> Facilities:
        """What the runners share, as the host is set up now (a reload may change settings)."""
        cgroups = self._cgroups if self._cgroups and self._cgroups.available else None
        return Facilities(
            self.config, self.findings, self._restart_policy, self.store, self._spawner, cgroups
        )

    def _sandbox_for(self, manifest: Manifest, admitted: Admitted) -> WorkerSandbox:
        self._slots += 1
        return WorkerSandbox(
            self.config, manifest, admitted.content, self._runtime_dir, self._slots
        )

    def _key_for(self, name: str) -> str:
        key = name if name not in self._keys else f"{name}#{len(self._keys)}"
        self._keys.add(key)
        return key

    @property
    def runners(self) -> list[PluginRunner]:
        """Every plugin's runner, those a reload took out and those in shadow included (for
        checks and accounts)."""
        return [*self.retired, *self.plugins.values(), *self.rollout.candidates]

    def install(self, runner: PluginRunner) -> None:
        """``runner`` is now its plugin's version (started, promoted or brought back)."""
        self.plugins[runner.name] = runner

    async def validated(self, manifest: Manifest, admitted: Admitted) -> bool:
        """Whether this content passed validation (in a host of its own)."""
        content = admitted.content
        rejection = await self.admission.validate(manifest, content, Supervisor)
        if rejection is None:
            self.record(manifest, "validated", measurement=content.measurement)
            return True
        self.rollout.reject(manifest.name, content)
        self.record(manifest, "rejected", str(rejection), measurement=content.measurement)
        return False

    async def reload(self, manifests: Iterable[Manifest]) -> dict[str, list[str]]:
        """Take in a new plugin set (``reload.py``): start the new plugins, replace the changed
        ones, retire the removed ones; the others keep running and lose nothing."""
        return await Reload(self).run(manifests)

    async def publish(self, event: Event) -> bool:
        """Accept one event: number it, stamp it, queue it for every group that wants its kind.

        Returns False (and counts it) for an event of no kind. Waits while a backlog is full.
        """
        kind = event_kind(event)
        if kind is None:
            self.rejected_events += 1
            return False
        self.accepted = seq = self.accepted + 1
        event.seq = seq
        if not event.host:
            event.host = self._hostname
        if not event.HasField("time"):
            # Not Timestamp.GetCurrentTime: it is Python code, a microsecond per event.
            now = time.time_ns()
            stamp = event.time
            stamp.seconds, stamp.nanos = divmod(now, 1_000_000_000)
        record = event_record(event.SerializeToString())
        # Into every group before any await, so that a publish cancelled while a backlog is
        # full (a stop that cannot wait) leaves the event owed to all of its groups or none.
        # One await per full batch, not one per event: put() never waits.
        full = [group for group in self._groups_by_kind[kind] if group.put(record, seq)]
        for group in full:
            await group.flush()
        return True

    async def publish_all(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            await self.publish(event)

    async def _flush_periodically(self) -> None:
        """Send a batch that has waited ``flush_interval_s``, however few it holds. Asleep
        while no event waits: an idle host does not wake 400 times a second for nothing."""
        interval = self.config.flush_interval_s
        while True:
            await self._waiting.wait()
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for group in self.groups.values():
                if group.age(now) >= interval:
                    await group.flush()
            if not any(group.waiting for group in self.groups.values()):
                self._waiting.clear()  # no await since the check: no event slipped in

    async def _watch_workers(self) -> None:
        """Check deadlines often and measure resources less often, for every worker; both at
        a slower pace while the host is quiet (no batch in flight, no event waiting, no worker
        starting or stopping), when the only deadlines left are seconds long (heartbeats,
        probation), and at once again when an event comes in."""
        last = last_sample = time.monotonic()
        quiet = False
        while True:
            tick = _QUIET_TICK_S if quiet else self.config.watchdog_interval_s
            if quiet:
                self._active.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._active.wait(), tick)
            else:
                await asyncio.sleep(tick)
            now = time.monotonic()
            runners = self.runners
            # A tick far later than asked: the host was not running (SIGSTOP, a frozen VM, a
            # starved machine) and could neither read what workers sent nor look at the clock.
            # That time is no worker's: every deadline is moved on by it before it is judged.
            paused, last = now - last - tick, now
            if paused > _PAUSE_TOLERANCE_S:
                log.warning(
                    "the host was not running; deadlines moved on", seconds=round(paused, 2)
                )
                for runner in runners:
                    runner.excuse(paused, now)
            for runner in runners:
                runner.check(now)
            self.rollout.advance(now)
            quiet = self._quiet(runners)
            if now - last_sample >= (_QUIET_SAMPLE_S if quiet else self.config.sample_interval_s):
                last_sample = now
                await self._sample_workers(now, runners)

    def _quiet(self, runners: list[PluginRunner]) -> bool:
        """No batch in flight, no event waiting, every worker settled."""
        return not self._waiting.is_set() and all(
            r.phase in _SETTLED and r.delivery.idle for r in runners
        )

    async def _sample_workers(self, now: float, runners: list[PluginRunner]) -> None:
        """Measure every running worker with what it started: read from its cgroup, or, for a
        worker without one, from one scan of the machine's processes."""
        members = {}
        for runner in runners:
            if runner.worker is not None and runner.phase is Phase.RUNNING:
                members[runner] = runner.worker.cgroup_members()
        unplaced = {r.pid for r, found in members.items() if found is None and r.pid}
        scanned = await asyncio.to_thread(descendants_by_root, unplaced) if unplaced else {}
        for runner, found in members.items():
            descendants = found if found is not None else scanned.get(runner.pid or 0)
            if descendants is not None:
                runner.sample_resources(now, descendants)

    def processed_through(self) -> int:
        """The number of the last event up to which every event was processed by every plugin
        owed it (or set aside, or counted undelivered): their findings are all written."""
        safe = self.accepted
        for group in self.groups.values():
            pending = group.first_pending_seq()
            if pending is not None:
                safe = min(safe, pending - 1)
        return safe

    async def drain(self) -> None:
        """Wait until every accepted event has been processed by every plugin that is owed it."""
        for group in self.groups.values():
            await group.flush()
        await asyncio.gather(*(g.backlog.wait_empty() for g in self.groups.values()))

    async def stop(self) -> None:
        """Drain, for ``drain_timeout_s`` at most; then let every worker run on_stop and exit
        (``stop_timeout_s`` at most, then it is killed); close the sockets. What could not be
        delivered in time is counted undelivered, plugin by plugin."""
        try:
            await asyncio.wait_for(self.drain(), self.config.drain_timeout_s)
        except TimeoutError:
            self._cut_off()
        await asyncio.gather(*(r.stop(self.config.stop_timeout_s) for r in self.runners))
        for runner in self.runners:
            runner.count_unowed()
        self.rollout.stop()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in self.runners:
            await runner.close_sessions(1.0)
        await self._spawner.close()
        if self._cgroups is not None:
            self._cgroups.close()
        remove_tree(self._runtime_dir)
        self.store.close()

    def _cut_off(self) -> None:
        """Deliver nothing more than what is in flight: the stop cannot wait for the rest."""
        owed = {runner.name: runner.delivery.owed_now() for runner in self.runners}
        log.warning(
            "not every accepted event could be delivered in time; stopping without the rest",
            drain_timeout_s=self.config.drain_timeout_s,
            undelivered={name: n for name, n in owed.items() if n},
        )
        for group in self.groups.values():
            waiting = group.drop_waiting()
            for runner in self.runners:
                if runner.group is group and runner.key in group.backlog.subscribers:
                    runner.stats.undelivered += waiting
        for runner in self.runners:
            runner.delivery.cut_off()
            runner.wake.set()

    async def abort(self) -> None:
        """Stop at once: kill every worker without draining (a second SIGINT). What each
        plugin was still owed is counted undelivered."""
        for runner in self.runners:
            runner.stats.undelivered += runner.delivery.owed_now()
            runner.count_unowed()
        for runner in self.runners:
            runner.kill_now()
            await runner.close()
        for runner in self.runners:
            await runner.close_sessions(0)
        await self._spawner.close()
        if self._cgroups is not None:
            self._cgroups.close()
        remove_tree(self._runtime_dir)
