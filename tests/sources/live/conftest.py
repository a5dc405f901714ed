"""Run a real sensor in a thread and collect what it sees."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from agent_host.protocol import Event
from agent_host.sources.live.base import Sensor


class Collector:
    """The events a running sensor emitted, with a way to wait for the ones a test expects."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def wait_for(
        self, matches: Callable[[Event], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Event]:
        """The matching events, once there are ``count`` of them or the timeout has passed."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.snapshot() if matches(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@contextmanager
def running(sensor: Sensor) -> Iterator[Collector]:
    """Run ``sensor`` until the block ends; the block starts once it is watching."""
    collector = Collector()
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sensor.run(collector.emit, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert sensor.ready.wait(10), f"sensor {sensor.name} never became ready: {errors}"
    try:
        yield collector
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
