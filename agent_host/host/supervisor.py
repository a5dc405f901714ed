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
from typing import Any

import structlog

from agent_host.errors import SandboxUnavailableError
from agent_host.host.admission import Admission
from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig, SandboxMode
from agent_host.host.fanout import Group
from agent_host.host.findings import FindingPipeline, FindingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.limits import descendants_by_root
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.runner import Facilities, PluginRunner
from agent_host.host.runtime import make_runtime_dir, not_dumpable
from agent_host.host.sandbox import WorkerSandbox, for_plugin, machine_report
from agent_host.host.spawn import ExecSpawner, Spawner, ZygoteSpawner, probe_sandbox
from agent_host.host.store import StateStore
from agent_host.host.suppress import Suppressions
from agent_host.host.updates.content import Admitted, measure, remove_tree
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


class Supervisor:
    """Hosts one worker per plugin and delivers every accepted event to every subscriber."""

    def __init__(
        self,
        config: HostConfig,
        manifests: Iterable[Manifest],
        sink: FindingSink,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
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
        self._spawner: Spawner = ExecSpawner()
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
        if self.config.zygote:
            zygote = ZygoteSpawner()
            if await zygote.start():
                self._spawner = zygote
                probe = zygote.sandbox_probe
        self.admission.say_policy()
        try:
            self.sandbox = self._machine_sandbox(probe or await probe_sandbox())
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
            self._log_start(runner)
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

    def _machine_sandbox(self, probe: str) -> SandboxReport:
        """What every worker's sandbox holds on this machine; each missing layer said once,
        and under a strict sandbox, an error."""
        report = machine_report(probe, self._cgroups)
        active = [layer.name for layer in report.layers if layer.active]
        log.info("sandbox layers active", layers=" ".join(active), mode=self.config.sandbox)
        for layer in report.layers:
            if not layer.active:
                log.warning(f"sandbox layer unavailable: {layer.name}", reason=layer.reason)
                chosen_off = layer.name == "cgroup" and not self.config.cgroups
                if self.config.sandbox is SandboxMode.STRICT and not chosen_off:
                    raise SandboxUnavailableError(layer.name, layer.reason)
        return report

    def layers_of(self, runner: PluginRunner) -> list[SandboxLayer]:
        return for_plugin(self.sandbox, runner.manifest)

    def _log_start(self, runner: PluginRunner) -> None:
        log.info(
            "plugin started" if runner.phase is Phase.RUNNING else "plugin not started",
            plugin=runner.name,
            version=runner.manifest.version,
            pid=runner.pid,
            state=runner.phase.value,
            subscribe=sorted(runner.manifest.subscribe),
        )

    def _group_for(self, kinds: frozenset[EventKind]) -> Group:
        group = self.groups.get(kinds)
        if group is None:
            group = Group(kinds, self.config.batch_size, self.config.backlog_batches)
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

    async def _candidates(
        self,
        wanted: dict[str, Manifest],
        digests: dict[str, str],
        refused: list[str],
        revoked: list[str],
    ) -> dict[str, tuple[Manifest, Admitted]]:
        """The plugins that are new or changed (manifest or content), admitted and, if the
        host validates updates, validated: each with the very content that will run. After a
        change of the content policy, the running plugins it now refuses go in ``revoked``."""
        candidates = {}
        for name, manifest in wanted.items():
            current = self.plugins.get(name)
            unchanged = current is not None and manifest == current.manifest
            if unchanged and current is not None and digests[name] == current.content.measurement:
                if self.admission.changed and not self.admission.still_admitted(
                    manifest, current.content
                ):
                    refused.append(name)
                    revoked.append(name)
                continue
            if self.rollout.in_shadow(manifest, digests[name]):
                continue
            admitted = self.admission.admit(manifest)
            if admitted is None or self.rollout.still_rejected(manifest, admitted.content):
                refused.append(name)
                continue
            if self.config.validate_updates and not await self._validated(manifest, admitted):
                refused.append(name)
                continue
            candidates[name] = (manifest, admitted)
        return candidates

    async def _validated(self, manifest: Manifest, admitted: Admitted) -> bool:
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
        """Take in a new plugin set: start the new plugins, replace the changed ones (a new
        version, manifest or any file of the folder), retire the removed ones. The others keep
        running and lose nothing.

        A changed plugin that is running is not replaced at once when the host shadows
        updates: its new version starts in shadow beside it (``rollout.py``) and replaces it
        when promoted. Every group is flushed first, so that a cut between an old version and
        its successor is between two batches: each event is processed by exactly one of them.
        """
        wanted = {m.name: m for m in self.admission.within_caps(manifests)}
        digests = {name: measure(m.directory) for name, m in wanted.items()}
        refused: list[str] = []
        revoked: list[str] = []
        candidates = await self._candidates(wanted, digests, refused, revoked)
        self.admission.changed = False
        # The cut: from here to the new runners' start, nothing awaits but the flush, so that
        # every event is owed to exactly one of the old and the new version.
        for group in self.groups.values():
            await group.flush()
        report: dict[str, list[str]] = {
            "added": [],
            "changed": [],
            "shadow": [],
            "removed": [],
            "kept": [],
            "refused": refused,
        }
        successors = {
            name: runner
            for name, (manifest, admitted) in candidates.items()
            if (runner := self.runner_for(manifest, admitted)) is not None
        }
        for name in list(self.rollout.trials):
            if name in successors or name not in wanted:
                self.rollout.withdraw(name, "superseded by a reload")
        for name, runner in list(self.plugins.items()):
            fate = self._fate(runner, successors.get(name), name in wanted, name in revoked)
            report[fate].append(name)
            if fate in ("changed", "removed"):
                self.retired.append(runner)
                del self.plugins[name]
        for name, runner in successors.items():
            if name not in self.plugins and name not in report["changed"]:
                report["added"].append(name)
            if name not in report["shadow"]:
                self.install(runner)
            runner.start()
        await asyncio.gather(*(r.wait_started() for r in successors.values()))
        for runner in successors.values():
            self._log_start(runner)
        log.info("plugins reloaded", **{k: sorted(v) for k, v in report.items()})
        return report

    def _fate(
        self, runner: PluginRunner, successor: PluginRunner | None, wanted: bool, revoked: bool
    ) -> str:
        """What a reload does with a running plugin: "shadow" (its successor starts beside
        it), "changed" or "removed" (retired), or "kept"."""
        if successor is not None and self.rollout.shadows(runner, successor):
            self.rollout.begin(runner, successor)
            return "shadow"
        if successor is not None:
            runner.retire(f"replaced by version {successor.manifest.version} in a reload")
            return "changed"
        if not wanted:
            runner.retire("removed by a reload")
            return "removed"
        if revoked:
            runner.retire("refused by the content policy of a reload")
            return "removed"
        return "kept"

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
        # One await per full batch, not one per event: put() never waits.
        for group in self._groups_by_kind[kind]:
            if group.put(record, seq):
                await group.flush()
        return True

    async def publish_all(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            await self.publish(event)

    async def _flush_periodically(self) -> None:
        interval = self.config.flush_interval_s
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for group in self.groups.values():
                if group.age(now) >= interval:
                    await group.flush()

    async def _watch_workers(self) -> None:
        """Check deadlines often and measure resources less often, for every worker."""
        interval = self.config.watchdog_interval_s
        every = max(1, round(self.config.sample_interval_s / interval))
        tick = 0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            runners = self.runners
            for runner in runners:
                runner.check(now)
            self.rollout.advance(now)
            tick += 1
            if tick % every:
                continue
            pids = {r.pid for r in runners if r.pid and r.phase is Phase.RUNNING}
            if not pids:
                continue
            descendants = await asyncio.to_thread(descendants_by_root, pids)
            for runner in runners:
                if runner.pid in descendants:
                    runner.sample_resources(now, descendants[runner.pid])

    async def drain(self) -> None:
        """Wait until every accepted event has been processed by every plugin that is owed it."""
        for group in self.groups.values():
            await group.flush()
        await asyncio.gather(*(g.backlog.wait_empty() for g in self.groups.values()))

    async def stop(self) -> None:
        """Drain, then let every worker run on_stop and exit; close the socket."""
        await self.drain()
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

    async def abort(self) -> None:
        """Stop at once: kill every worker without draining (a second SIGINT)."""
        for runner in self.runners:
            runner.kill_now()
            await runner.close()
        for runner in self.runners:
            await runner.close_sessions(0)
        await self._spawner.close()
        if self._cgroups is not None:
            self._cgroups.close()
        remove_tree(self._runtime_dir)
