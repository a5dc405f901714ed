"""Live sensors feed the host through one bounded queue; the hub supervises them.

Each sensor runs in its own thread (they block on the kernel: netlink, inotify, polling) and
hands events to ``SensorHub.emit``. The queue between them and the host is bounded. When it is
full the overflow policy decides: ``block`` makes the sensor wait (nothing is lost, but the
kernel may drop on its side), ``drop_oldest`` discards the oldest queued event. Every drop is
counted per sensor and reported periodically, as Falco reports dropped syscall events.

A sensor that raises is logged and restarted with backoff; the host never notices beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from typing import Final

import structlog

from agent_host.protocol import Event
from agent_host.sources.live.base import Emit, Sensor

log = structlog.get_logger("agent_host")

_RESTART_BACKOFF_S: Final = (0.1, 30.0)


class OverflowPolicy(enum.StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class SensorHub:
    """Runs sensors in threads and turns their events into one async stream for the host."""

    def __init__(
        self,
        sensors: list[Sensor],
        capacity: int = 65_536,
        policy: OverflowPolicy = OverflowPolicy.BLOCK,
        report_interval_s: float = 10.0,
    ) -> None:
        self.sensors = sensors
        self._capacity = capacity
        self._policy = policy
        self._report_interval_s = report_interval_s
        self._queue: deque[tuple[str, Event]] = deque()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._consumer_waiting = False
        self.emitted: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self._reported_drops = 0

    def start(self) -> None:
        """Start every sensor in its own supervised thread (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        for sensor in self.sensors:
            thread = threading.Thread(
                target=self._supervise, args=(sensor,), name=f"sensor-{sensor.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop the sensors and wait for their threads; the event stream then ends."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._loop is not None and self._ready is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _supervise(self, sensor: Sensor) -> None:
        backoff, ceiling = _RESTART_BACKOFF_S
        emit = self._emitter(sensor.name)
        while not self._stop.is_set():
            started = time.monotonic()
            sensor.ready.clear()
            threading.Thread(target=self._announce, args=(sensor,), daemon=True).start()
            try:
                sensor.run(emit, self._stop)
                if self._stop.is_set():
                    return
                log.error("sensor stopped by itself; restarting", sensor=sensor.name)
            except Exception as exc:
                log.error(
                    "sensor failed; restarting",
                    sensor=sensor.name,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=backoff,
                )
            self.restarts[sensor.name] += 1
            if time.monotonic() - started > ceiling:
                backoff = _RESTART_BACKOFF_S[0]  # it ran well for a while: start afresh
            self._stop.wait(backoff)
            backoff = min(backoff * 2, ceiling)

    def _announce(self, sensor: Sensor) -> None:
        if sensor.ready.wait(30):
            log.info("sensor started", sensor=sensor.name, kind=type(sensor).__name__)

    def _emitter(self, sensor: str) -> Emit:
        return _SensorEmit(self, sensor)

    def emit_many(self, sensor: str, events: Sequence[Event]) -> None:
        """Queue ``events`` under one lock, waking the host at most once (thread-safe);
        applies the overflow policy to each when full."""
        if not events:
            return
        with self._lock:
            for event in events:
                if self._room(sensor):
                    self._queue.append((sensor, event))
                    self.emitted[sensor] += 1
            wake = self._consumer_waiting
            self._consumer_waiting = False
        if wake:
            self._call_consumer()

    def _room(self, sensor: str) -> bool:
        """(Under the lock) room for one more event: wait for the host to drain (block), or
        drop the oldest (counted); False if the hub is stopping and this one is dropped."""
        while len(self._queue) >= self._capacity:
            if self._policy is OverflowPolicy.DROP_OLDEST:
                dropped_from, _ = self._queue.popleft()
                self.dropped[dropped_from] += 1
                return True
            if self._stop.is_set():
                self.dropped[sensor] += 1
                return False
            self._wake_consumer()  # it may be waiting for the first of this batch
            self._lock.wait(0.1)
        return True

    def _wake_consumer(self) -> None:
        """(Under the lock) the host must drain a full queue: wake it if it waits."""
        if self._consumer_waiting:
            self._consumer_waiting = False
            self._call_consumer()

    def _call_consumer(self) -> None:
        if self._loop is not None and self._ready is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _take(self, most: int) -> list[Event]:
        with self._lock:
            count = min(most, len(self._queue))
            taken = [self._queue.popleft()[1] for _ in range(count)]
            if count:
                self._lock.notify_all()
            else:
                self._consumer_waiting = True
            return taken

    def _report_drops(self) -> None:
        total = sum(self.dropped.values())
        if total > self._reported_drops:
            log.warning(
                "events dropped: sensor queue full",
                dropped=total - self._reported_drops,
                dropped_total=total,
                by_sensor=dict(self.dropped),
                policy=self._policy.value,
                capacity=self._capacity,
            )
            self._reported_drops = total

    async def __aiter__(self) -> AsyncIterator[Event]:
        assert self._ready is not None, "start() the hub first"
        last_report = time.monotonic()
        while not (self._stop.is_set() and not self._queue):
            events = self._take(256)
            for event in events:
                yield event
            now = time.monotonic()
            if now - last_report >= self._report_interval_s:
                self._report_drops()
                last_report = now
            if not events:
                # Wake on the next event, or in a while anyway to report drops.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), self._report_interval_s)
                self._ready.clear()

    def report(self) -> None:
        """Log the final drop count (at shutdown)."""
        self._report_drops()


class _SensorEmit:
    """What one sensor hands its events to: one at a time, or ``many`` at once (see
    :func:`agent_host.sources.live.base.emit_all`)."""

    def __init__(self, hub: SensorHub, sensor: str) -> None:
        self._hub = hub
        self._sensor = sensor

    def __call__(self, event: Event) -> None:
        self._hub.emit_many(self._sensor, (event,))

    def many(self, events: Sequence[Event]) -> None:
        self._hub.emit_many(self._sensor, events)
