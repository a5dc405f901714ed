"""The sensor hub: supervision of sensors, and the bounded queue between them and the host."""

from __future__ import annotations

import asyncio
import threading

import structlog

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live import OverflowPolicy, SensorHub
from agent_host.sources.live.base import Emit, emit_all


def file_event(n: int) -> Event:
    return Event(file=FileEvent(action=FileEvent.CREATED, path=f"/x/{n}"))


class Flaky:
    """Raises on its first ``failures`` runs, then emits ``count`` events and idles."""

    name = "flaky"

    def __init__(self, failures: int, count: int) -> None:
        self.failures = failures
        self.count = count
        self.runs = 0
        self.ready = threading.Event()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        self.runs += 1
        self.ready.set()
        if self.runs <= self.failures:
            raise OSError(f"device went away (run {self.runs})")
        for n in range(self.count):
            emit(file_event(n))
        stop.wait()


async def collect(hub: SensorHub, count: int, timeout: float = 10) -> list[Event]:
    got: list[Event] = []

    async def take() -> None:
        async for event in hub:
            got.append(event)
            if len(got) == count:
                return

    await asyncio.wait_for(take(), timeout)
    return got


class TestSupervision:
    """A sensor that raises is logged and restarted; its events still arrive."""

    def test_failing_sensor_is_restarted(self) -> None:
        sensor = Flaky(failures=2, count=5)

        async def scenario() -> list[Event]:
            hub = SensorHub([sensor])
            hub.start()
            try:
                return await collect(hub, 5)
            finally:
                await asyncio.to_thread(hub.stop)

        with structlog.testing.capture_logs() as logs:
            events = asyncio.run(scenario())
        assert [e.file.path for e in events] == [f"/x/{n}" for n in range(5)]
        assert sensor.runs == 3
        failures = [e for e in logs if e["event"] == "sensor failed; restarting"]
        assert [f["error"] for f in failures] == [
            "OSError: device went away (run 1)",
            "OSError: device went away (run 2)",
        ]
        assert all(f["sensor"] == "flaky" for f in failures)


class TestOverflow:
    """A full queue drops the oldest (counted, reported) or makes the sensor wait."""

    def test_drop_oldest_counts_and_reports(self) -> None:
        sensor = Flaky(failures=0, count=100)

        async def scenario() -> tuple[SensorHub, list[Event]]:
            hub = SensorHub([sensor], capacity=10, policy=OverflowPolicy.DROP_OLDEST)
            hub.start()
            await asyncio.to_thread(sensor.ready.wait)
            while hub.emitted["flaky"] < 100:
                await asyncio.sleep(0.01)
            events = await collect(hub, 10)
            await asyncio.to_thread(hub.stop)
            hub.report()
            return hub, events

        with structlog.testing.capture_logs() as logs:
            hub, events = asyncio.run(scenario())
        assert [e.file.path for e in events] == [f"/x/{n}" for n in range(90, 100)]
        assert hub.dropped == {"flaky": 90}
        report = next(e for e in logs if e["event"] == "events dropped: sensor queue full")
        assert (report["dropped"], report["policy"], report["capacity"]) == (90, "drop_oldest", 10)

    def test_block_loses_nothing(self) -> None:
        sensor = Flaky(failures=0, count=1000)

        async def scenario() -> tuple[SensorHub, list[Event]]:
            hub = SensorHub([sensor], capacity=10, policy=OverflowPolicy.BLOCK)
            hub.start()
            await asyncio.sleep(0.2)  # the sensor fills the queue and waits
            assert hub.emitted["flaky"] == 10
            events = await collect(hub, 1000)
            await asyncio.to_thread(hub.stop)
            return hub, events

        hub, events = asyncio.run(scenario())
        assert [e.file.path for e in events] == [f"/x/{n}" for n in range(1000)]
        assert hub.dropped == {}

    def test_a_batch_larger_than_the_queue_waits_for_a_waiting_host(self) -> None:
        """A sensor hands over what one read of the kernel gave, many at once; a batch that
        fills the queue while the host waits for the first event wakes it, or both would wait
        on each other (the host is told only once a batch is queued)."""
        events = [file_event(n) for n in range(1000)]

        class Burst(Flaky):
            def run(self, emit: Emit, stop: threading.Event) -> None:
                self.ready.set()
                emit_all(emit, events)
                stop.wait()

        sensor = Burst(failures=0, count=0)

        async def scenario() -> list[Event]:
            hub = SensorHub([sensor], capacity=10, policy=OverflowPolicy.BLOCK)
            hub.start()
            got = await collect(hub, 1000, timeout=10)
            await asyncio.to_thread(hub.stop)
            return got

        got = asyncio.run(scenario())
        assert [e.file.path for e in got] == [f"/x/{n}" for n in range(1000)]
