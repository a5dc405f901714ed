"""The plugin authors' API: subclass ``Plugin``, yield ``Finding``s.

A plugin is a folder with a ``plugin.toml`` and a module whose class derives from Plugin::

    from agent_host.sdk import Event, Finding, Plugin, ProcessAction, Severity

    class SuspiciousExec(Plugin):
        def on_event(self, event: Event) -> Iterator[Finding]:
            process = event.process
            if process.action == ProcessAction.START and process.exe.startswith("/tmp/"):
                yield Finding(rule="exec_from_tmp", severity="high",
                              message=f"executed from /tmp: {process.exe}")

Events are the protobuf messages of ``protos/agent_host/protocol/v1/event.proto`` (read them; do
not keep references to them after on_event returns). The plugin runs in its own sandboxed worker
process: whatever it does, it cannot harm the host or the other plugins.

Mistakes are caught where they are made: a ``Finding`` checks its fields when it is created and
names the field and what it expected; a ``Plugin`` subclass with a method ``on_<something>`` that
is not a hook fails at its class statement, naming the method and the hook it probably meant.
"""

from __future__ import annotations

import difflib
import enum
import errno
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

from agent_host.protocol import Event, FileEvent, NetworkEvent, ProcessEvent
from agent_host.protocol import Finding as _WireFinding

__all__ = [
    "ContentError",
    "Event",
    "FileAction",
    "FileEvent",
    "Finding",
    "NetworkAction",
    "NetworkEvent",
    "Plugin",
    "ProcessAction",
    "ProcessEvent",
    "Severity",
    "open_file",
]


class Severity(enum.IntEnum):
    """How urgent a finding is; the values are those of ``Finding.Severity`` in the protocol."""

    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


class ProcessAction(enum.IntEnum):
    """``ProcessEvent.action``."""

    START = ProcessEvent.START
    EXIT = ProcessEvent.EXIT


class FileAction(enum.IntEnum):
    """``FileEvent.action``."""

    CREATED = FileEvent.CREATED
    MODIFIED = FileEvent.MODIFIED
    DELETED = FileEvent.DELETED
    MOVED = FileEvent.MOVED
    ATTRIBUTES = FileEvent.ATTRIBUTES


class NetworkAction(enum.IntEnum):
    """``NetworkEvent.action``."""

    CONNECT = NetworkEvent.CONNECT
    LISTEN = NetworkEvent.LISTEN
    CLOSE = NetworkEvent.CLOSE
    ACCEPT = NetworkEvent.ACCEPT


_TECHNIQUE: Final = re.compile(r"^T\d{4}(\.\d{3})?$")
#: Attribute keys the host keeps for itself: the names of a finding's own fields.
_RESERVED: Final = frozenset(f.name for f in _WireFinding.DESCRIPTOR.fields)
_SEVERITY_NAMES: Final = ", ".join(repr(s.name.lower()) for s in Severity)


def _severity(value: object) -> Severity:
    if isinstance(value, Severity):
        return value
    if isinstance(value, str):
        try:
            return Severity[value.strip().upper()]
        except KeyError:
            raise ValueError(
                f"Finding.severity: unknown severity {value!r}; one of {_SEVERITY_NAMES}"
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Severity(value)
        except ValueError:
            raise ValueError(f"Finding.severity: {value} is not a severity (1 to 5)") from None
    raise TypeError(
        f"Finding.severity: expected a Severity or one of {_SEVERITY_NAMES}, "
        f"got {type(value).__name__}"
    )


def _strings(name: str, value: object, example: str) -> tuple[str, ...]:
    """A tuple of strings from a list or tuple of strings; a bare string is refused, since
    iterating it would give one string per character."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"Finding.{name}: expected a tuple of strings like {example}, "
            f"got {type(value).__name__} {value!r}"
        )
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"Finding.{name}: expected strings, got {type(item).__name__}")
    return items


@dataclass(frozen=True, slots=True)
class Finding:
    """One detection. Checked when created: a wrong field raises TypeError or ValueError naming
    the field and what it expected.

    Args:
        rule: A stable identifier of the rule that fired, e.g. ``"exec_from_tmp"``.
        severity: How urgent it is: a ``Severity``, or its name (``"high"``).
        message: One human-readable line.
        event_ids: ``Event.seq`` of the events it is about; defaults to the event being handled.
            Every id must be of an event this plugin was given, or the host rejects the finding.
        attributes: Extra string key/values for the analyst.
        techniques: MITRE ATT&CK technique ids, e.g. ``("T1059.004",)``.
    """

    rule: str
    severity: Severity
    message: str
    event_ids: tuple[int, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    techniques: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not self.rule:
            raise TypeError(f"Finding.rule: expected a non-empty string, got {self.rule!r}")
        if not isinstance(self.message, str):
            raise TypeError(
                f"Finding.message: expected a string, got {type(self.message).__name__}"
            )
        # Frozen: normalised values are set the way dataclasses itself does.
        object.__setattr__(self, "severity", _severity(self.severity))
        ids = self.event_ids
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = (ids,)
        if not isinstance(ids, Iterable) or isinstance(ids, str | bytes):
            raise TypeError(
                f"Finding.event_ids: expected a tuple of event seq numbers, "
                f"got {type(ids).__name__}"
            )
        ids = tuple(ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids):
            raise TypeError(f"Finding.event_ids: expected positive integers, got {ids!r}")
        object.__setattr__(self, "event_ids", ids)
        if not isinstance(self.attributes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.attributes.items()
        ):
            raise TypeError("Finding.attributes: expected a mapping of strings to strings")
        reserved = sorted(_RESERVED.intersection(self.attributes))
        if reserved:
            raise ValueError(
                f"Finding.attributes: {reserved[0]!r} is reserved for what the host stamps; "
                "use another key"
            )
        techniques = _strings("techniques", self.techniques, "('T1059.004',)")
        bad = [t for t in techniques if not _TECHNIQUE.match(t)]
        if bad:
            raise ValueError(
                f"Finding.techniques: {bad[0]!r} is not an ATT&CK technique id like 'T1059.004'"
            )
        object.__setattr__(self, "techniques", techniques)


#: The hooks a plugin may define; any other ``on_*`` method is a mistake.
HOOKS: Final = frozenset({"on_start", "on_event", "on_stop"})


class ContentError(Exception):
    """Content a plugin cannot use, found in a validation run (``Plugin.content_error``)."""


class Plugin:
    """Base class of every detection plugin. Override the ``on_*`` hooks you need.

    The worker calls, in order: ``on_start(config)`` once, ``on_event(event)`` for each event of
    the kinds the manifest subscribes to, and ``on_stop()`` once at shutdown. Findings may be
    returned (one, or a list), or yielded, from on_event and on_stop. An exception in on_event
    is logged and counted; the event counts as processed with an error, and the plugin keeps
    running.
    """

    #: The ``[config]`` table of the manifest, set before on_start is called.
    config: Mapping[str, Any]
    #: A logger whose records reach the host's log, tagged with the plugin's name and pid.
    log: logging.Logger
    #: True in a validation run: a new version, or new content, tried before it is activated.
    validating: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("on_") and name not in HOOKS:
                close = difflib.get_close_matches(name, sorted(HOOKS), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise TypeError(
                    f"{cls.__qualname__}.{name} is not a hook of agent_host.sdk.Plugin "
                    f"(hooks: {', '.join(sorted(HOOKS))}){hint}"
                )

    def on_start(self, config: Mapping[str, Any]) -> None:
        """Prepare (compile rules, open files). Raising here fails the plugin's start."""

    def content_error(self, problem: str) -> None:
        """Report content the plugin cannot use (a rule that does not parse), from on_start.

        In service the problem is logged and the plugin runs with the rest of its content;
        in a validation run it fails the start, so that the new content is rejected before
        it replaces what runs.

        Raises:
            ContentError: in a validation run.
        """
        if self.validating:
            raise ContentError(problem)
        self.log.warning("%s", problem)

    def on_event(self, event: Event) -> Iterable[Finding] | Finding | None:
        """Inspect one event; return or yield findings, or return None."""
        return None

    def on_stop(self) -> Iterable[Finding] | Finding | None:
        """Release resources; may report findings for state held until now."""
        return None


class _Broker:
    """The worker's end of the host's file broker (see ``agent_host.host.broker``)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()

    def open(self, path: str) -> BinaryIO:
        with self._lock:
            self._sock.send(os.fsencode(path))
            answer, fds, _, _ = socket.recv_fds(self._sock, 64, 1)
        if answer == b"ok" and len(fds) == 1:
            return os.fdopen(fds[0], "rb")
        for fd in fds:
            os.close(fd)
        code = errno.EIO
        if answer.startswith(b"error ") and answer[6:].isdigit():
            code = int(answer[6:])
        raise OSError(code, os.strerror(code), path)


#: The worker's broker, once the worker has attached it (a list so that no global is rebound).
_brokers: list[_Broker] = []


def attach_broker(fd: int) -> None:
    """Called by the worker at start: open_file goes through the host's broker on ``fd``."""
    _brokers[:] = [_Broker(fd)]


def open_file(path: str) -> BinaryIO:
    """Open ``path`` for reading (binary), as the manifest's ``[permissions] read`` grants.

    In a sandboxed worker the plugin's own user may not read what other users keep to
    themselves; the host opens the file for it, read-only, if it is a regular file below a
    granted path, and hands over the descriptor. Outside a worker (a plugin's own unit tests)
    this is ``open(path, "rb")``. Raises OSError as ``open`` does (EACCES: not granted).
    """
    if not _brokers:
        return open(path, "rb")
    return _brokers[0].open(path)
