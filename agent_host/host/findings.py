"""What happens to a finding between a worker and the findings file, in one place.

A worker is untrusted. Every finding it reports goes through ``FindingPipeline.accept``, in this
order:

1. **cap**: the findings of an event that has more than the manifest's
   ``max_findings_per_event`` are all rejected (a flood says nothing an analyst can use);
2. **check**: bounded fields, a known severity, and citations only of events the plugin was given;
3. **stamp**: plugin name and version from the manifest, host name and time from the host;
4. **id**: a digest of what makes a detection the same detection;
5. **dedup**: an id already written is not written again (a redelivered event repeats nothing);
6. **sink**: written. A sink that fails is the host's fault, never the plugin's: it is logged
   once per error, the findings are counted as lost, and the plugin carries on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol

import orjson
import structlog

from agent_host.host.stats import PluginStats
from agent_host.host.suppress import Suppressions
from agent_host.host.untrusted import printable
from agent_host.protocol import Finding

log = structlog.get_logger("agent_host")

_MAX_TEXT: Final = 4096
_MAX_ATTRIBUTES: Final = 64
_MAX_EVENT_IDS: Final = 1024
_SEVERITY_NAMES: Final = {v.number: v.name for v in Finding.Severity.DESCRIPTOR.values}
#: Attribute keys a plugin may not use: the names of what a finding carries, which the host
#: stamps or checks, so that no attribute can pass for the plugin, host or id of a finding.
RESERVED_ATTRIBUTES: Final = frozenset(f.name for f in Finding.DESCRIPTOR.fields)


class FindingSink(Protocol):
    """Where accepted findings go. ``write`` may raise OSError; the pipeline deals with it."""

    def write(self, findings: Sequence[Finding]) -> None: ...

    def close(self) -> None: ...


def finding_json(finding: Finding) -> bytes:
    """``finding`` in the protobuf JSON mapping (proto field names, defaults left out, uint64 as
    strings, the enum by name), as ``message_to_json`` writes it, at a tenth of its cost: the
    findings file is on the host's hot path (a test compares the two)."""
    out: dict[str, object] = {}
    for name in ("id", "plugin", "plugin_version", "rule"):
        value = getattr(finding, name)
        if value:
            out[name] = value
    if finding.severity:
        out["severity"] = _SEVERITY_NAMES.get(finding.severity, finding.severity)
    if finding.message:
        out["message"] = finding.message
    if finding.event_ids:
        out["event_ids"] = [str(i) for i in finding.event_ids]
    if finding.attributes:
        out["attributes"] = dict(finding.attributes)
    if finding.techniques:
        out["techniques"] = list(finding.techniques)
    if finding.host:
        out["host"] = finding.host
    if finding.HasField("time"):
        out["time"] = finding.time.ToJsonString()
    for name in ("plugin_measurement", "plugin_signer"):
        value = getattr(finding, name)
        if value:
            out[name] = value
    return orjson.dumps(out)


class Batch(list[Finding]):
    """Findings written together, each serialized once: the findings file and every output
    (export, webhook, syslog, program) take the same JSON (each serialized it again before)."""

    _json: list[bytes] | None = None

    def json(self) -> list[bytes]:
        if self._json is None:
            self._json = [finding_json(f) for f in self]
        return self._json


def json_lines(findings: Sequence[Finding]) -> list[bytes]:
    """Each finding's JSON: a :class:`Batch`'s own, else serialized here."""
    if isinstance(findings, Batch):
        return findings.json()
    return [finding_json(f) for f in findings]


class JsonLinesSink:
    """Appends findings to a JSON Lines file and shows them on a terminal.

    Each batch is written whole or not at all: a write the disk cannot take in full is cut back
    to where the file ended, so a full disk never leaves half a line for a reader to choke on.

    With ``max_bytes``, a batch that takes the file to that size is its last: the file is
    renamed ``FILE.1`` (``FILE.1`` to ``FILE.2``, ..., up to ``keep``, the oldest removed) and a
    new one opened, as osquery's filesystem logger rotates; a batch is never split between two
    files. Without it the file grows until logrotate moves it and SIGHUP reopens it.
    """

    def __init__(
        self,
        path: Path | None,
        terminal: IO[str] | None = sys.stdout,
        *,
        max_bytes: int = 0,
        keep: int = 5,
    ) -> None:
        self._path = path
        self._fd: int | None = self._open(path) if path is not None else None
        self._terminal = terminal
        self._max_bytes = max_bytes
        self._keep = keep

    @staticmethod
    def _open(path: Path) -> int:
        # 0600 whatever the umask: findings carry command lines, paths and users.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = os.fstat(fd).st_mode
        if mode & 0o077 and stat.S_ISREG(mode):
            os.fchmod(fd, 0o600)  # a file made by an earlier version, or by hand
        return fd

    @property
    def path(self) -> Path | None:
        """The findings file (None: the terminal only)."""
        return self._path

    def reopen(self, path: Path | None = None) -> None:
        """Open the file by its name again (logrotate has moved the old one away), or the file
        at ``path`` from now on (the config file names another)."""
        path = path or self._path
        if path is None:
            return
        fd = self._open(path)  # first: a failure leaves the old file in use
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path = fd, path

    def write(self, findings: Sequence[Finding]) -> None:
        if self._fd is not None:
            self._append(b"".join(line + b"\n" for line in json_lines(findings)))
        if self._terminal is not None:
            for f in findings:
                ids = ",".join(map(str, f.event_ids[:5]))
                self._terminal.write(
                    f"[{_SEVERITY_NAMES.get(f.severity, '?'):<8}] "
                    f"{f.plugin}/{printable(f.rule, 256)}: {printable(f.message)}  (events {ids})\n"
                )
            self._terminal.flush()

    def _append(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        end = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)  # whole lines or nothing
            raise
        if self._max_bytes and end + written >= self._max_bytes:
            try:
                self._rotate()
            except OSError as exc:  # the batch is written: say so, and keep to this file
                log.warning("cannot rotate the findings file", path=str(self._path), error=str(exc))

    def _rotate(self) -> None:
        """FILE to FILE.1, FILE.1 to FILE.2, ...; the file past ``keep`` is removed."""
        path = self._path
        assert path is not None
        for n in range(self._keep, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if n == self._keep:
                older.unlink(missing_ok=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    older.rename(path.with_name(f"{path.name}.{n + 1}"))
        path.rename(path.with_name(f"{path.name}.1"))
        self.reopen()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CollectingSink:
    """Keeps findings in memory (tests, ``agent_host.testing``, embedding)."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def write(self, findings: Sequence[Finding]) -> None:
        self.findings.extend(findings)

    def close(self) -> None:
        return None


def finding_id(finding: Finding, run: str = "") -> str:
    """A digest of what makes a detection the same detection: plugin, rule, events, message,
    within one run of one host (``run``: events are numbered afresh by each run, so the same
    numbers in another run, or on another host, are other events)."""
    ids = ",".join(map(str, finding.event_ids))
    text = "\0".join((run, finding.host, finding.plugin, finding.rule, ids, finding.message))
    return hashlib.blake2b(f"{text}\0".encode(), digest_size=16).hexdigest()


def check(finding: Finding, was_given: Callable[[int], bool]) -> str | None:
    """Why ``finding`` must be rejected, or None if it may pass.

    ``was_given`` tells whether the plugin was given the event with a sequence number: a finding
    may cite only those (a correlation may cite events of earlier batches).
    """
    rule = finding.rule
    if not rule or len(rule) > 256:
        return "rule must be 1 to 256 characters"
    if len(finding.message) > _MAX_TEXT:
        return f"message longer than {_MAX_TEXT} characters"
    severity = finding.severity
    if severity not in _SEVERITY_NAMES or severity == 0:
        return f"unknown severity {severity}"
    event_ids = finding.event_ids
    if len(event_ids) > _MAX_EVENT_IDS:
        return f"more than {_MAX_EVENT_IDS} event ids"
    attributes = finding.attributes
    if attributes and (  # most findings have none: skip the (slow) map iteration
        len(attributes) > _MAX_ATTRIBUTES
        or any(len(k) + len(v) > _MAX_TEXT for k, v in attributes.items())
    ):
        return f"more than {_MAX_ATTRIBUTES} attributes or an attribute over {_MAX_TEXT} bytes"
    if len(finding.techniques) > 32:
        return "more than 32 techniques"
    if attributes:
        reserved = sorted(RESERVED_ATTRIBUTES.intersection(attributes))
        if reserved:
            return f"attribute key {reserved[0]!r} is reserved for what the host stamps"
    foreign = [i for i in event_ids if not was_given(i)]
    if foreign:
        return f"refers to events it was not given: {foreign[:5]}"
    return None


class Deduplicator:
    """Remembers the ids of the most recent findings, so a redelivered event cannot repeat one.

    Bounded: ``capacity`` ids, oldest forgotten first. A redelivery comes within one backlog of
    the original, far fewer findings ago than the default capacity.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, fid: str) -> bool:
        if fid in self._seen:
            self._seen.move_to_end(fid)
            return False
        self._seen[fid] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


@dataclass(frozen=True, slots=True)
class Source:
    """Who reported findings, as the host knows it from the manifest (never from the worker)."""

    plugin: str
    version: str
    #: The content that produced the findings, and who signed it ("" for nobody trusted).
    measurement: str
    signer: str
    max_findings_per_event: int
    stats: PluginStats
    #: Whether the plugin was given the event with this sequence number.
    was_given: Callable[[int], bool]


class FindingPipeline:
    """Cap, check, stamp, id, dedup and sink: every finding of every plugin, in that order."""

    def __init__(
        self,
        sink: FindingSink,
        hostname: str,
        dedup_capacity: int = 65_536,
        suppressions: Suppressions | None = None,
    ) -> None:
        self.sink = sink
        #: This run of this host, in every finding's id: ids are unique across runs and hosts
        #: (a fleet's store, JetStream's duplicate window, would drop a repeated one).
        self.run_id: Final = secrets.token_hex(8)
        #: What the operator judged benign: dropped after stamping, counted per plugin.
        self.suppressions = Suppressions(allowlist=False) if suppressions is None else suppressions
        self._hostname = hostname
        self._dedup = Deduplicator(dedup_capacity)
        #: Findings written to the sink.
        self.written = 0
        #: Findings accepted but lost because the sink failed (the host's fault, counted here).
        self.lost = 0
        #: Why the last findings were lost ("" while none are).
        self.last_error = ""
        self._last_sink_error = ""
        #: Told of every batch of findings once written (``agent-host tail``); each must
        #: return at once and never raise.
        self.listeners: list[Callable[[Sequence[Finding]], None]] = []

    def accept(self, source: Source, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        stats = source.stats
        fresh: list[Finding] = []
        # One clock reading for the batch (Timestamp.GetCurrentTime is Python, per call).
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        for finding in self._cap(source, findings):
            problem = check(finding, source.was_given)
            if problem is not None:
                stats.rejected_findings += 1
                log.warning(
                    "finding rejected",
                    plugin=source.plugin,
                    rule=finding.rule[:64],
                    problem=problem,
                )
                continue
            finding.plugin = source.plugin
            finding.plugin_version = source.version
            finding.plugin_measurement = source.measurement
            finding.plugin_signer = source.signer
            finding.host = self._hostname
            stamp = finding.time
            stamp.seconds, stamp.nanos = seconds, nanos
            finding.id = finding_id(finding, self.run_id)
            if self.suppressions and self.suppressions.suppressed(finding):
                stats.suppressed_findings += 1
                continue
            if self._dedup.first_time(finding.id):
                fresh.append(finding)
            else:
                stats.duplicate_findings += 1
        if not fresh:
            return
        stats.findings += len(fresh)
        self._write(Batch(fresh))

    def _cap(self, source: Source, findings: Sequence[Finding]) -> Sequence[Finding]:
        """Drop the findings of any event that has more than the manifest allows."""
        limit = source.max_findings_per_event
        if len(findings) <= limit:
            return findings
        per_event = Counter(f.event_ids[0] if f.event_ids else 0 for f in findings)
        flooded = {seq for seq, count in per_event.items() if count > limit}
        if not flooded:
            return findings
        kept = [f for f in findings if (f.event_ids[0] if f.event_ids else 0) not in flooded]
        source.stats.rejected_findings += len(findings) - len(kept)
        log.warning(
            "findings rejected: too many for one event",
            plugin=source.plugin,
            events=sorted(flooded)[:5],
            most=max(per_event.values()),
            limit=limit,
        )
        return kept

    def _write(self, findings: list[Finding]) -> None:
        try:
            self.sink.write(findings)
        except OSError as exc:
            self.lost += len(findings)
            error = f"{exc.strerror or exc}"
            self.last_error = error
            if error != self._last_sink_error:  # once per kind of failure, not per batch
                self._last_sink_error = error
                path = getattr(self.sink, "path", None) or getattr(exc, "filename", None)
                log.error(
                    "findings could not be written; counting them as lost",
                    error=error,
                    path=str(path) if path else None,
                )
            return
        self._last_sink_error = ""
        self.written += len(findings)
        for listener in self.listeners:
            listener(findings)

    def close(self) -> None:
        try:
            self.sink.close()
        except OSError as exc:  # what it still held could not be written: said, not raised
            log.error("findings sink could not be closed", error=exc.strerror or str(exc))
