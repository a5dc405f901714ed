"""Delivery and poison isolation for one plugin, over a real backlog, without a process."""

from __future__ import annotations

import asyncio

import pytest

from agent_host.errors import ProtocolError
from agent_host.host.delivery import PIECE_ID_BASE, Delivery
from agent_host.host.fanout import Group
from agent_host.host.lifecycle import Blame
from agent_host.host.poison import PoisonBudget
from agent_host.host.stats import PluginStats
from agent_host.protocol import Event, ProcessEvent, event_record


def record(seq: int) -> bytes:
    event = Event(seq=seq, process=ProcessEvent(action=ProcessEvent.START, pid=seq))
    return event_record(event.SerializeToString())


async def delivering(
    events: int, stats: PluginStats, *, batch_size: int = 4, window: int = 4
) -> tuple[Group, Delivery]:
    """A group with one plugin "p", and its delivery, after ``events`` events were published."""
    group = Group(frozenset({"process"}), batch_size, backlog_batches=64)
    group.backlog.subscribers.add("p")
    delivery = Delivery("p", group, window=window, stats=stats)
    for seq in range(1, events + 1):
        await group.add(record(seq), seq)
    await group.flush()
    return group, delivery


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


class TestWindow:
    """At most ``window`` batches are in flight, answered in order, each event accounted for."""

    def test_window_and_in_order_answers(self) -> None:
        async def scenario() -> None:
            stats = PluginStats()
            _, delivery = await delivering(24, stats, window=3)
            sent = [delivery.next_batch(0.0) for _ in range(4)]
            assert [b.batch_id if b else None for b in sent] == [1, 2, 3, None]
            assert stats.delivered == 12
            with pytest.raises(ProtocolError, match="answered batch 2, which it was not given"):
                delivery.answered(2, 4, 1.0)
            with pytest.raises(ProtocolError, match="processed 3 of the 4 events in batch 1"):
                delivery.answered(1, 3, 1.0)
            answered = delivery.answered(1, 4, 1.0)
            assert answered.finished is answered.batch
            assert delivery.head_since == 1.0
            nxt = delivery.next_batch(1.0)
            assert nxt is not None
            assert nxt.batch_id == 4

        run(scenario())

    def test_a_dead_worker_gets_its_batches_again(self) -> None:
        async def scenario() -> None:
            stats = PluginStats()
            group, delivery = await delivering(16, stats)
            for _ in range(4):
                delivery.next_batch(0.0)
            await group.backlog.done("p", delivery.answered(1, 4, 0.1).batch)
            in_flight, attribution = delivery.lost(Blame.PLUGIN, generation=1)
            assert (in_flight, attribution.blame, attribution.suspect) == (12, Blame.PLUGIN, None)
            again = [delivery.next_batch(1.0) for _ in range(3)]
            assert [b.batch_id for b in again if b] == [2, 3, 4]
            assert stats.redelivered == 12
            assert delivery.was_given(16)
            assert not delivery.was_given(17)

        run(scenario())


class TestPoison:
    """A batch that fails twice is bisected down to the one event that kills the plugin."""

    @pytest.mark.parametrize("poison", [1, 37, 64])
    def test_bisection_finds_exactly_the_poison_event(self, poison: int) -> None:
        async def scenario() -> None:
            stats = PluginStats()
            group, delivery = await delivering(64, stats, batch_size=64)
            deaths = 0
            letters: list[int] = []
            forgiven: tuple[int, ...] = ()
            for generation in (1, 2):
                delivery.next_batch(0.0)
                _, attribution = delivery.lost(Blame.PLUGIN, generation)
                deaths += 1
            assert attribution.suspect is not None
            while (batch := delivery.next_batch(0.0)) is not None:
                assert batch.batch_id > PIECE_ID_BASE
                assert delivery.next_batch(0.0) is None  # pieces go one at a time
                if poison in batch.seqs:
                    _, attribution = delivery.lost(Blame.PLUGIN, generation=deaths + 1)
                    deaths += 1
                    assert attribution.blame is Blame.EVENT
                    if attribution.dead_letter is not None:
                        letters.extend(attribution.dead_letter.seqs)
                        forgiven = attribution.forgive
                    finished = attribution.finished
                else:
                    finished = delivery.answered(batch.batch_id, len(batch), 0.0).finished
                if finished is not None:  # as the runner does: the plugin is done with it
                    await group.backlog.done("p", finished)
            assert letters == [poison]
            assert forgiven == (1, 2)  # the two deaths that made the batch suspect
            assert deaths == 2 + 6  # 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1
            assert stats.delivered - stats.redelivered == 64

        run(scenario())

    def test_innocent_batches_are_cleared_when_processed(self) -> None:
        async def scenario() -> None:
            _, delivery = await delivering(8, PluginStats(), window=2)
            delivery.next_batch(0.0)
            delivery.lost(Blame.PLUGIN, 1)  # batch 1 charged once
            delivery.next_batch(0.0)
            delivery.answered(1, 4, 0.0)  # ... then processed: cleared
            delivery.next_batch(0.0)
            _, attribution = delivery.lost(Blame.PLUGIN, 2)  # batch 2 charged once only
            assert attribution.suspect is None

        run(scenario())

    def test_kills_from_outside_are_charged_too(self) -> None:
        """A plugin that SIGKILLs itself on one event still gets that event set aside (or it
        would stall its group), though such deaths never count toward quarantine."""

        async def scenario() -> None:
            _, delivery = await delivering(1, PluginStats(), window=2)
            for generation in (1, 2):
                delivery.next_batch(0.0)
                _, attribution = delivery.lost(Blame.OUTSIDE, generation)
                assert attribution.blame is Blame.OUTSIDE
            assert attribution.suspect is not None
            delivery.next_batch(0.0)
            _, attribution = delivery.lost(Blame.OUTSIDE, 3)
            assert attribution.dead_letter is not None
            assert attribution.dead_letter.seqs == [1]

        run(scenario())

        run(scenario())


class TestPoisonBudget:
    """A plugin poisoned by a large share of its input, or too often, is quarantined."""

    def test_a_few_poison_events_in_many_are_within_budget(self) -> None:
        budget = PoisonBudget(per_hour=100, max_share=0.1, min_letters=10)
        for i in range(20):
            budget.processed(499)
            assert budget.dead_letter(float(i)) == ""

    def test_a_large_share_spends_it(self) -> None:
        budget = PoisonBudget(per_hour=100, max_share=0.1, min_letters=10)
        spent = [budget.dead_letter(float(i)) for i in range(10)]
        assert spent[:9] == [""] * 9
        assert spent[9] == "10 of 10 events dead-lettered (100% > 10%)"

    def test_too_many_in_an_hour_spend_it(self) -> None:
        budget = PoisonBudget(per_hour=5, max_share=1.0, min_letters=10)
        budget.processed(1_000_000)
        spent = [budget.dead_letter(float(i)) for i in range(6)]
        assert spent[-1] == "6 dead letters within an hour > 5"
        later = PoisonBudget(per_hour=5, max_share=1.0)
        later.processed(1_000_000)
        assert all(later.dead_letter(i * 1000.0) == "" for i in range(20))
