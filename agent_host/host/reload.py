"""A reload: the plugin set as the folders have it now, taken in by a running host.

New plugins start; changed ones (a new version, manifest or any file of the folder) are
replaced, after validation, and through a shadow run when the host shadows updates
(``updates/rollout.py``); removed ones are retired; the content policy is applied again to the
running ones when it changed. Every group is flushed first, so that the cut between an old
version and its successor is between two batches: each event is processed by exactly one of
them, and the others keep running and lose nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import structlog

from agent_host.host.admission import Admission
from agent_host.host.config import HostConfig
from agent_host.host.fanout import Group
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.runner import PluginRunner
from agent_host.host.updates.content import Admitted, measure
from agent_host.host.updates.rollout import Rollout
from agent_host.protocol import EventKind

log = structlog.get_logger("agent_host")


class ReloadHost(Protocol):
    """What a reload needs of the supervisor."""

    admission: Admission
    rollout: Rollout[PluginRunner]
    plugins: dict[str, PluginRunner]
    retired: list[PluginRunner]
    groups: dict[frozenset[EventKind], Group]
    config: HostConfig

    def runner_for(
        self, manifest: Manifest, admitted: Admitted | None = None
    ) -> PluginRunner | None: ...

    def install(self, runner: PluginRunner) -> None: ...

    def record(
        self,
        runner: PluginRunner | Manifest,
        what: str,
        detail: str = "",
        *,
        measurement: str = "",
    ) -> None: ...

    async def validated(self, manifest: Manifest, admitted: Admitted) -> bool: ...


def log_start(runner: PluginRunner) -> None:
    """Say whether the plugin started, and if not, in what state it is."""
    log.info(
        "plugin started" if runner.phase is Phase.RUNNING else "plugin not started",
        plugin=runner.name,
        version=runner.manifest.version,
        pid=runner.pid,
        state=runner.phase.value,
        subscribe=sorted(runner.manifest.subscribe),
    )


class Reload:
    """One reload of ``host``'s plugin set."""

    def __init__(self, host: ReloadHost) -> None:
        self._host = host

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
            current = self._host.plugins.get(name)
            unchanged = current is not None and manifest == current.manifest
            if unchanged and current is not None and digests[name] == current.content.measurement:
                if self._host.admission.changed and not self._host.admission.still_admitted(
                    manifest, current.content
                ):
                    refused.append(name)
                    revoked.append(name)
                continue
            if self._host.rollout.in_shadow(manifest, digests[name]):
                continue
            admitted = self._host.admission.admit(manifest)
            if admitted is None or self._host.rollout.still_rejected(manifest, admitted.content):
                refused.append(name)
                continue
            if self._host.config.validate_updates and not await self._host.validated(
                manifest, admitted
            ):
                refused.append(name)
                continue
            candidates[name] = (manifest, admitted)
        return candidates

    async def run(self, manifests: Iterable[Manifest]) -> dict[str, list[str]]:
        """Take in a new plugin set: start the new plugins, replace the changed ones (a new
        version, manifest or any file of the folder), retire the removed ones. The others keep
        running and lose nothing.

        A changed plugin that is running is not replaced at once when the host shadows
        updates: its new version starts in shadow beside it (``rollout.py``) and replaces it
        when promoted. Every group is flushed first, so that a cut between an old version and
        its successor is between two batches: each event is processed by exactly one of them.
        """
        wanted = {m.name: m for m in self._host.admission.within_caps(manifests)}
        digests = {name: measure(m.directory) for name, m in wanted.items()}
        refused: list[str] = []
        revoked: list[str] = []
        candidates = await self._candidates(wanted, digests, refused, revoked)
        self._host.admission.changed = False
        # The cut: from here to the new runners' start, nothing awaits but the flush, so that
        # every event is owed to exactly one of the old and the new version.
        for group in self._host.groups.values():
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
            if (runner := self._host.runner_for(manifest, admitted)) is not None
        }
        for name in list(self._host.rollout.trials):
            if name in successors or name not in wanted:
                self._host.rollout.withdraw(name, "superseded by a reload")
        for name, runner in list(self._host.plugins.items()):
            fate = self._fate(runner, successors.get(name), name in wanted, name in revoked)
            report[fate].append(name)
            if fate in ("changed", "removed"):
                self._host.retired.append(runner)
                del self._host.plugins[name]
        for name, runner in successors.items():
            if name not in self._host.plugins and name not in report["changed"]:
                report["added"].append(name)
            if name not in report["shadow"]:
                self._host.install(runner)
            runner.start()
        await asyncio.gather(*(r.wait_started() for r in successors.values()))
        for runner in successors.values():
            log_start(runner)
        log.info("plugins reloaded", **{k: sorted(v) for k, v in report.items()})
        return report

    def _fate(
        self, runner: PluginRunner, successor: PluginRunner | None, wanted: bool, revoked: bool
    ) -> str:
        """What a reload does with a running plugin: "shadow" (its successor starts beside
        it), "changed" or "removed" (retired), or "kept"."""
        if successor is not None and self._host.rollout.shadows(runner, successor):
            self._host.rollout.begin(runner, successor)
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
