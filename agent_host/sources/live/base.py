"""What a live sensor is, to the hub that runs it: kept apart so that sensors and the hub do not
import each other."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from agent_host.protocol import Event

#: How a sensor hands over an event; it may block (the hub's overflow policy decides).
Emit = Callable[[Event], None]
#: After a round of reading the kernel, a sensor's wait before the next: a burst is read in
#: rounds of many events (one wakeup of the host each), not a round an event.
ROUND_GAP_S: Final = 0.002


def stamp(event: Event, ns: int | None = None) -> Event:
    """``event`` stamped with ``ns`` (nanoseconds since the epoch; now if None), set field by
    field: protobuf's GetCurrentTime and FromNanoseconds are Python, a microsecond or more an
    event on the sensors' hot path."""
    seconds, nanos = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    event.time.seconds, event.time.nanos = seconds, nanos
    return event


def emit_all(emit: Emit, events: list[Event]) -> None:
    """Hand over ``events`` together: through the hub's ``many`` where there is one (one lock
    and at most one wakeup of the host for all of them), else one by one."""
    many = getattr(emit, "many", None)
    if many is not None:
        many(events)
    else:
        for event in events:
            emit(event)


class Sensor(Protocol):
    """A source of live events. ``run`` blocks until ``stop`` is set, emitting as it goes."""

    name: str
    #: Set once the sensor is watching: what happens from then on is seen.
    ready: threading.Event

    def run(self, emit: Emit, stop: threading.Event) -> None: ...
