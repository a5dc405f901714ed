"""What a worker sends back for its batches, taken in for one plugin version.

A processed batch goes to the plugin's accounts (processed, errors, latency, the poison
budget's denominator) and out of the group's backlog; its findings go through the one finding
pipeline (``findings.py``), stamped with this version's name, measurement and signer, unless the
version is in a shadow trial (``updates/shadow.py``), which keeps a candidate's findings apart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import structlog

from agent_host.host.delivery import PIECE_ID_BASE, Answered, Delivery
from agent_host.host.findings import FindingPipeline, Source
from agent_host.host.poison import PoisonBudget
from agent_host.host.updates.shadow import ShadowTrial
from agent_host.protocol import Finding


class Results:
    """Takes in the results and findings of one plugin version's workers."""

    def __init__(
        self,
        version: object,
        source: Source,
        pipeline: FindingPipeline,
        delivery: Delivery,
        budget: PoisonBudget,
        *,
        wake: asyncio.Event,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        #: The version as a shadow trial knows it (its runner).
        self._version: Final = version
        #: Stamps findings with the version's name, version, measurement and signer.
        self._source: Final = source
        self._pipeline: Final = pipeline
        self._delivery: Final = delivery
        self._budget: Final = budget
        self._stats: Final = source.stats
        self._wake: Final = wake
        self._log: Final = log
        #: The shadow trial the version is in (as the current version or the candidate).
        self.trial: ShadowTrial[Any] | None = None

    async def processed(self, answered: Answered, findings: list[Finding], errors: int) -> None:
        """Account for a batch the worker processed, and its findings."""
        batch = answered.batch
        stats = self._stats
        stats.batch_latency.observe(time.monotonic() - batch.created)
        self._emit(batch.seqs, findings)
        stats.processed += len(batch)
        stats.errors += errors
        self._budget.processed(len(batch))
        finished = answered.finished
        if finished is not None:
            delivery = self._delivery
            await delivery.group.backlog.done(delivery.plugin, finished)
            if batch.batch_id >= PIECE_ID_BASE:
                self._log.info("isolation finished", batch_events=len(finished))
        self._wake.set()

    def at_stop(self, findings: list[Finding]) -> None:
        """The findings on_stop reported."""
        self._emit(None, findings)

    def _emit(self, seqs: list[int] | None, findings: list[Finding]) -> None:
        if self.trial is not None:
            findings = self.trial.emitted(self._version, seqs, findings)
        self._pipeline.accept(self._source, findings)
