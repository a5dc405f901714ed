"""Validation before activation: a new plugin version, or new content, runs first in a
validation worker (the same sandbox, a host of its own) over its own test cases and a corpus of
hostile events derived from the event schema. It is rejected, with the reason and the event that
broke it, on a crash, a hang past its deadline, a memory overrun or a failed expectation; the
running version is not touched.

The hostile corpus takes each event kind and, field by field, what a parser is least ready
for: every field empty, each string huge or odd (control characters, bidi overrides, NUL,
astral-plane characters), each repeated string very long, each number at zero and at its
type's extremes, each enum at a value it does not define. A plugin's own cases are
``validation/cases.jsonl`` in its folder: one JSON object a line, ``{"event": EVENT, "expect":
[RULE, ...]}``, each event in the recordings' JSON form, each expectation the rules of the
findings it must raise (in any order, no others).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from google.protobuf.descriptor import FieldDescriptor

from agent_host.host.config import HostConfig, SignaturePolicy
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.stats import PluginStats
from agent_host.host.store import StateStore
from agent_host.protocol import EVENT_KINDS, Event, message_from_json

CASES_FILE: Final = Path("validation") / "cases.jsonl"
HUGE_STRING: Final = 64 * 1024
LONG_LIST: Final = 10_000
ODD_STRINGS: Final = (
    "\x00",
    "\x1b[2J\x1b[Hforged",
    "\u202e\u2066evil\u2069",
    "\U0001f600" * 64,
    "a\nb\rc",
    " ",
)
_INTEGER_EXTREMES: Final = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}
#: A hostile run is a short one: room for a handful of faults, never a breaker's backoff.
_POLICY: Final = RestartPolicy(backoff_s=0.01, burst=1_000, stable_after_s=0.5)


def _variants(kind: str) -> Iterator[tuple[str, Event]]:
    """(what is odd about it, the event) for one event kind."""
    empty = Event()
    getattr(empty, kind).SetInParent()
    yield f"{kind}: every field empty", empty
    for field in getattr(Event(), kind).DESCRIPTOR.fields:
        where = f"{kind}.{field.name}"
        values: list[tuple[str, object]] = []
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                values = [
                    (f"{LONG_LIST} entries", ["x"] * LONG_LIST),
                    ("odd characters", list(ODD_STRINGS)),
                    ("one huge entry", ["x" * HUGE_STRING]),
                ]
            else:
                values = [(f"{HUGE_STRING} characters", "x" * HUGE_STRING)]
                values += [(f"{text!r}"[:24], text) for text in ODD_STRINGS]
        elif field.type in _INTEGER_EXTREMES:
            values = [(f"= {n}", n) for n in _INTEGER_EXTREMES[field.type]]
        elif field.type == FieldDescriptor.TYPE_ENUM:
            top = max(v.number for v in field.enum_type.values)
            values = [(f"= {top + 1} (not a defined value)", top + 1), ("= 0", 0)]
        elif field.type == FieldDescriptor.TYPE_BOOL:
            values = [("= true", True)]
        for label, value in values:
            event = Event()
            message = getattr(event, kind)
            message.SetInParent()
            if field.is_repeated:
                getattr(message, field.name).extend(value)
            else:
                setattr(message, field.name, value)
            yield f"{where} {label}", event


def hostile_events(kinds: frozenset[str] | None = None) -> list[tuple[str, Event]]:
    """The hostile corpus, for the given event kinds (all by default)."""
    chosen = EVENT_KINDS if kinds is None else [k for k in EVENT_KINDS if k in kinds]
    return [variant for kind in chosen for variant in _variants(kind)]


@dataclass(frozen=True, slots=True)
class Case:
    description: str
    event: Event
    #: The rules its findings must have; None for a hostile event (anything but a fault).
    expect: tuple[str, ...] | None


def own_cases(directory: Path) -> list[Case]:
    """The plugin's own cases (``validation/cases.jsonl``); a bad line is a failed case."""
    path = directory / CASES_FILE
    if not path.is_file():
        return []
    cases = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        data = json.loads(line)
        event = message_from_json(json.dumps(data["event"]), Event())
        cases.append(Case(f"{CASES_FILE}:{number}", event, tuple(sorted(data.get("expect", [])))))
    return cases


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a version was rejected, and the event that broke it ("" when none did)."""

    reason: str
    event: str

    def __str__(self) -> str:
        return f"{self.reason} (on {self.event})" if self.event else self.reason


class ValidatedRunner(Protocol):
    """What validation reads of the runner of the version it tries (a ``PluginRunner``)."""

    @property
    def phase(self) -> Phase: ...

    @property
    def reason(self) -> str: ...

    @property
    def stats(self) -> PluginStats: ...


class ValidationHost(Protocol):
    """The validation host: a supervisor of its own (the caller's class, so that this module
    needs none of the supervisor's)."""

    @property
    def plugins(self) -> Mapping[str, ValidatedRunner]: ...

    store: StateStore

    async def start(self) -> None: ...
    async def publish(self, event: Event) -> bool: ...
    async def drain(self) -> None: ...
    async def stop(self) -> None: ...


HostFactory = Callable[[HostConfig, list[Manifest], CollectingSink, RestartPolicy], ValidationHost]


async def validate(manifest: Manifest, config: HostConfig, host: HostFactory) -> Rejection | None:
    """Run ``manifest`` (its content as it is now) over its own cases and the hostile
    corpus, in a host of its own made by ``host``; None if it passed."""
    try:
        cases = own_cases(manifest.directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Rejection(f"its {CASES_FILE} cannot be read: {exc}", "")
    hostile = [Case(what, event, None) for what, event in hostile_events(manifest.subscribe)]
    everything = [*cases, *hostile]
    sink = CollectingSink()
    settings = dataclasses.replace(
        config,
        state_dir=None,
        batch_size=8,
        signatures=SignaturePolicy.OFF,
        trusted_keys=(),
        validating=True,
    )
    sup = host(settings, [manifest], sink, _POLICY)
    await sup.start()
    runner = sup.plugins.get(manifest.name)
    try:
        if runner is None or runner.phase.final:
            reason = runner.reason if runner is not None else "refused"
            return Rejection(f"did not start: {reason}", "")
        for case in everything:
            await sup.publish(case.event)
        await sup.drain()
        letters = sup.store.dead_letters()
    finally:
        await sup.stop()
    if letters:
        letter = letters[0]
        return Rejection(letter.failure, everything[letter.seq - 1].description)
    if runner.stats.restarts:
        causes = ", ".join(f"{k}={v}" for k, v in sorted(runner.stats.restarts.items()))
        return Rejection(f"its worker failed while validated ({causes})", "")
    for seq, case in enumerate(everything, 1):
        if case.expect is None:
            continue
        got = tuple(sorted(f.rule for f in sink.findings if seq in f.event_ids))
        if got != case.expect:
            return Rejection(f"expected {list(case.expect)}, got {list(got)}", case.description)
    return None
