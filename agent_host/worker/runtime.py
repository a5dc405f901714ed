"""The worker runtime: one process, one plugin, one session with the host.

The host starts it fresh (``agent_host.worker.runtime.main`` in a new interpreter, never a fork) and
writes the spawn's secret to its standard input. The worker confines itself, connects, says Hello
with the secret, and only then imports the plugin the host names in Start. From there it answers
each EventBatch with a BatchResult, until Stop.

The plugin's ``logging`` records travel to the host over the session; its stdout and stderr are
pipes the host reads. Both reach the host's log tagged with the plugin's name and this pid.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import queue
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import grpc

from agent_host import sdk
from agent_host.protocol import (
    BatchResult,
    EventBatch,
    Finding,
    Heartbeat,
    Hello,
    LoadFailed,
    LogRecord,
    Ready,
    Start,
    Stopped,
    WorkerExit,
    WorkerMessage,
    WorkerSessionStub,
)

HEARTBEAT_INTERVAL_S: Final = 2.0
_GRPC_WAIT_SLICE_S: Final = 5.0
_OUTBOX_SIZE: Final = 1024
_MAX_LOG_MESSAGE: Final = 4096
#: Distinct errors whose traceback is shown (then one line each), and its last lines at most.
_TRACEBACKS: Final = 32
_TRACEBACK_LINES: Final = 40


class _SessionLogHandler(logging.Handler):
    """Sends log records to the host over the session; never blocks the plugin.

    When the outbox is full the record is dropped and counted, and the count is reported with the
    next record that gets through.
    """

    def __init__(self, outbox: queue.Queue[WorkerMessage | None]) -> None:
        super().__init__()
        self._outbox = outbox
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a plugin's bad format string must not kill its logging
            text = f"(unformattable log record: {record.msg!r})"
        if self._dropped:
            text = f"{text} ({self._dropped} earlier log records dropped: outbox full)"
        message = WorkerMessage(
            log=LogRecord(level=record.levelno, logger=record.name, message=text[:_MAX_LOG_MESSAGE])
        )
        try:
            self._outbox.put_nowait(message)
            self._dropped = 0
        except queue.Full:
            self._dropped += 1


def _where(exc: BaseException, plugin_dir: Path) -> str:
    """The innermost frame of ``exc`` inside the plugin's folder, as ``file:line``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{Path(exc.filename).name}:{exc.lineno}"
    for frame in reversed(frames):
        # Not resolved: a plugin's files may be links to elsewhere; what counts is where the
        # worker imported them from.
        if Path(os.path.abspath(frame.filename)).is_relative_to(plugin_dir):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return ""


def describe_exception(exc: BaseException, plugin_dir: Path) -> str:
    """One line naming the exception and where in the plugin it was raised."""
    where = _where(exc, plugin_dir)
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    text += _meant(exc)
    return f"{text} (at {where})" if where else text


def _meant(exc: BaseException) -> str:
    """For a misspelt attribute (``event.process.cmdlin``), the name that was meant."""
    if not isinstance(exc, AttributeError) or not exc.name:
        return ""
    obj = exc.obj
    descriptor = getattr(obj, "DESCRIPTOR", None)  # an event: its fields, not protobuf's API
    names = list(descriptor.fields_by_name) if descriptor is not None else dir(obj)
    close = difflib.get_close_matches(exc.name, [n for n in names if not n.startswith("_")], n=1)
    where = f"{type(obj).__name__} has no field {exc.name!r}" if descriptor is not None else ""
    if close:
        return (
            f" ({where}; did you mean {close[0]!r}?)" if where else f" (did you mean {close[0]!r}?)"
        )
    return f" ({where})" if where else ""


def load_plugin(start: Start) -> sdk.Plugin:
    """Import the plugin named by ``start`` and run its on_start; raises what the plugin raises."""
    plugin_dir = Path(start.plugin_dir)
    module_name, class_name = start.entrypoint.split(":", 1)
    sys.path.insert(0, str(plugin_dir))
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and n[0] != "_"]
        close = difflib.get_close_matches(class_name, classes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AttributeError(f"module {module_name!r} has no class {class_name!r}{hint}")
    if not (isinstance(cls, type) and issubclass(cls, sdk.Plugin)):
        raise TypeError(f"{start.entrypoint} is not a subclass of agent_host.sdk.Plugin")
    plugin = cls()
    config = json.loads(start.config_json or "{}")
    plugin.config = config
    plugin.validating = start.validating
    plugin.log = logging.getLogger(f"plugin.{start.plugin_name}")
    plugin.on_start(config)
    return plugin


def _findings(produced: object) -> Iterable[object]:
    """What a hook returned, as findings: None is none, a single Finding is one."""
    if produced is None:
        return ()
    if isinstance(produced, sdk.Finding):
        return (produced,)
    if isinstance(produced, Iterable) and not isinstance(produced, str | bytes | Mapping):
        return produced
    raise TypeError(
        f"expected findings (a Finding, a list of them, or yield them), "
        f"got {type(produced).__name__}"
    )


def _to_proto(finding: object, default_event_id: int | None) -> Finding:
    """The protocol's Finding; without event_ids it is about ``default_event_id`` (on_stop has
    no event in hand: then it is about none)."""
    if not isinstance(finding, sdk.Finding):
        raise TypeError(f"expected agent_host.sdk.Finding, got {type(finding).__name__}")
    return Finding(
        rule=finding.rule,
        severity=int(finding.severity),  # type: ignore[arg-type]  # IntEnum matches the proto's
        message=finding.message,
        event_ids=finding.event_ids or (() if default_event_id is None else (default_event_id,)),
        attributes=dict(finding.attributes),
        techniques=finding.techniques,
    )


class Runtime:
    """Runs one loaded plugin over batches of events."""

    def __init__(self, plugin: sdk.Plugin, plugin_dir: Path) -> None:
        self._plugin = plugin
        self._plugin_dir = plugin_dir
        self._log = logging.getLogger("agent_host.worker.runtime")
        self._tracebacks_shown: set[tuple[str, str]] = set()

    def process(self, batch: EventBatch) -> WorkerMessage:
        message = WorkerMessage()
        result: BatchResult = message.result
        result.batch_id = batch.batch_id
        on_event = self._plugin.on_event
        findings = result.findings
        errors = 0
        for event in batch.events:
            try:
                # Converted in full before any is kept: an event's findings are all or none.
                findings.extend([_to_proto(f, event.seq) for f in _findings(on_event(event))])
            except MemoryError:
                raise  # the worker is in no state to go on; the host will say why
            except Exception as exc:
                errors += 1
                if errors == 1:  # one line per batch is enough to debug; the count says the rest
                    self._said_raised(event.seq, exc)
        result.processed = len(batch.events)
        result.errors = errors
        return message

    def _said_raised(self, seq: int, exc: Exception) -> None:
        """One line at error; at debug, the traceback too, the first time this error (its type
        and where it was raised) is seen, so that an author sees where without a flood."""
        self._log.error(
            "on_event raised on event %d: %s", seq, describe_exception(exc, self._plugin_dir)
        )
        signature = (type(exc).__name__, _where(exc, self._plugin_dir))
        if not self._log.isEnabledFor(logging.DEBUG) or signature in self._tracebacks_shown:
            return
        if len(self._tracebacks_shown) < _TRACEBACKS:
            self._tracebacks_shown.add(signature)
            # On one line, " | " between its lines: the host escapes a worker's line breaks,
            # so that no plugin can write a line that looks like the host's own.
            lines = "".join(traceback.format_exception(exc)).splitlines()[-_TRACEBACK_LINES:]
            shown = " | ".join(t.strip() for t in lines if t.strip(" ^~"))
            self._log.debug("on_event traceback: %s", shown)

    def stop(self) -> WorkerMessage:
        message = WorkerMessage(stopped=Stopped())
        try:
            produced = self._plugin.on_stop()
            message.stopped.findings.extend([_to_proto(f, None) for f in _findings(produced)])
        except Exception as exc:
            self._log.error("on_stop raised: %s", describe_exception(exc, self._plugin_dir))
        return message


def _drain(outbox: queue.Queue[WorkerMessage | None]) -> Iterator[WorkerMessage]:
    while (message := outbox.get()) is not None:
        yield message


def _heartbeat(outbox: queue.Queue[WorkerMessage | None], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_INTERVAL_S):
        if outbox.empty():  # any message is a sign of life; only beat when there is none
            outbox.put(WorkerMessage(heartbeat=Heartbeat()))


def _slow_grpc_wait_polls() -> None:
    """grpc's blocking calls wait in slices of ``grpc._common.MAXIMUM_WAIT_TIMEOUT`` (0.1 s)
    so that the main thread can run Python signal handlers; an idle worker's main thread, in
    the session's iterator, woke ten times a second for it, most of its idle CPU. A worker
    handles no signal in Python (SIGTERM kills it by the kernel's default action), so the
    slices can be long. A private constant: if grpc drops it, this does nothing."""
    common = getattr(grpc, "_common", None)
    if common is not None and hasattr(common, "MAXIMUM_WAIT_TIMEOUT"):
        common.MAXIMUM_WAIT_TIMEOUT = _GRPC_WAIT_SLICE_S


def serve(channel: grpc.Channel, worker_id: str, token: bytes) -> int:
    """Run the session until the host stops it; return the exit code."""
    _slow_grpc_wait_polls()
    outbox: queue.Queue[WorkerMessage | None] = queue.Queue(_OUTBOX_SIZE)
    handler = _SessionLogHandler(outbox)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    outbox.put(WorkerMessage(hello=Hello(worker_id=worker_id, token=token, pid=os.getpid())))
    stopping = threading.Event()
    threading.Thread(target=_heartbeat, args=(outbox, stopping), daemon=True).start()

    runtime: Runtime | None = None
    # Set once our last message is queued. We keep reading after that: the host ends the stream
    # once it has that message, and leaving earlier would tear the call down with it unsent.
    last_word: int | None = None
    try:
        for message in WorkerSessionStub(channel).Session(_drain(outbox)):
            body = message.WhichOneof("body")
            if last_word is not None:
                continue
            if body == "batch" and runtime is not None:
                outbox.put(runtime.process(message.batch))
            elif body == "start":
                logging.getLogger().setLevel(message.start.log_level or logging.INFO)
                try:
                    runtime = Runtime(load_plugin(message.start), Path(message.start.plugin_dir))
                except BaseException as exc:  # SystemExit at import is a load failure too
                    reason = describe_exception(exc, Path(message.start.plugin_dir))
                    outbox.put(WorkerMessage(load_failed=LoadFailed(reason=reason)))
                    outbox.put(None)
                    last_word = WorkerExit.WORKER_EXIT_LOAD_ERROR
                    continue
                outbox.put(WorkerMessage(ready=Ready()))
            elif body == "stop":
                if runtime is not None:
                    outbox.put(runtime.stop())
                outbox.put(None)
                last_word = WorkerExit.WORKER_EXIT_OK
    except grpc.RpcError:
        pass
    finally:
        stopping.set()
        outbox.put(None)
    return WorkerExit.WORKER_EXIT_SESSION_LOST if last_word is None else last_word
