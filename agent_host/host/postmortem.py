"""A dead worker's postmortem: what it held, where that goes, and whose fault its death was.

Everything in flight to a worker that dies is redelivered to its replacement. Its death is
charged to what it held (``poison.py``): a batch charged twice is bisected, and the one event
that kills the plugin is set aside as a dead letter, which is the event's fault, not the
plugin's. A SIGKILL the host did not send is the outside's; a restart the operator asked for is
the host's own doing, and nothing is charged for it. The verdict goes back to the lifecycle as
the ``Exited`` input it decides on.
"""

from __future__ import annotations

import signal
import time
from typing import Final

import structlog

from agent_host.host import lifecycle as lc
from agent_host.host.delivery import Delivery
from agent_host.host.poison import Attribution, PoisonBudget
from agent_host.host.records import PluginRecords
from agent_host.protocol import EventBatch


class Postmortem:
    """Examines each death of one plugin version's workers."""

    def __init__(
        self,
        delivery: Delivery,
        budget: PoisonBudget,
        records: PluginRecords,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._delivery: Final = delivery
        self._budget: Final = budget
        self._records: Final = records
        self._log: Final = log

    async def examine(self, exited: lc.Exited, life: lc.Lifecycle) -> lc.Exited:
        """Settle what the dead worker held; the exit, with whose fault it was."""
        phase = life.phase
        verdict = life.verdict_for(exited.returncode)
        if phase not in (lc.Phase.STARTING, lc.Phase.RUNNING):
            self._delivery.rewind()  # nothing is charged to what it held while stopping
            if phase is lc.Phase.DRAINING and exited.returncode != 0:
                self._log.warning("worker ended badly while stopping", reason=verdict.detail)
            return exited
        if verdict.cause == lc.OPERATOR:  # the host's own doing: nothing it held is charged
            self._delivery.rewind()
            self._log.info("worker restarted by the operator")
            return lc.Exited(exited.generation, exited.returncode, lc.Blame.HOST)
        killed_from_outside = life.death is None and exited.returncode == -signal.SIGKILL
        blame = lc.Blame.OUTSIDE if killed_from_outside else lc.Blame.PLUGIN
        in_flight, attribution = self._delivery.lost(blame, exited.generation)
        self._log.error(
            "worker died",
            cause=verdict.detail,
            in_flight_events=in_flight,
            blame=attribution.blame.value,
        )
        spent = await self._apply(attribution, verdict)
        return lc.Exited(
            exited.generation, exited.returncode, attribution.blame, spent, attribution.forgive
        )

    async def _apply(self, attribution: Attribution, verdict: lc.Verdict) -> str:
        """Act on an attribution; return why the poison budget is spent, if it is."""
        spent = ""
        if attribution.suspect is not None:
            suspect = attribution.suspect
            self._log.warning(
                "isolating a poison event",
                batch_events=len(suspect),
                first_seq=suspect.seqs[0],
                last_seq=suspect.seqs[-1],
            )
        if attribution.dead_letter is not None:
            piece = attribution.dead_letter
            event = EventBatch.FromString(piece.records[0]).events[0]
            self._records.dead_letter(piece.seqs[0], verdict.detail, event.SerializeToString())
            spent = self._budget.dead_letter(time.monotonic())
        if attribution.finished is not None:
            delivery = self._delivery
            await delivery.group.backlog.done(delivery.plugin, attribution.finished)
            self._log.info("isolation finished", batch_events=len(attribution.finished))
        return spent
