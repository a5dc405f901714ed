"""What happens to a finding between a worker and the findings file.

A worker is untrusted: the host checks each finding against the batch it answers, stamps it with
what the host knows (plugin name and version from the manifest, host name, time), gives it an id
that is the same for the same detection, and writes each id once.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

from agent_host.protocol import Finding, message_to_json

_MAX_TEXT: Final = 4096
_MAX_ATTRIBUTES: Final = 64
_MAX_EVENT_IDS: Final = 1024
_SEVERITY_NAMES: Final = {v.number: v.name for v in Finding.Severity.DESCRIPTOR.values}


def finding_id(finding: Finding) -> str:
    """A digest of what makes a detection the same detection: plugin, rule, events, message."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (
        finding.plugin,
        finding.rule,
        ",".join(map(str, finding.event_ids)),
        finding.message,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def check(finding: Finding, was_given: Callable[[int], bool]) -> str | None:
    """Why ``finding`` must be rejected, or None if it may pass.

    ``was_given`` tells whether the plugin was given the event with a sequence number: a finding
    may cite only those (a correlation may cite events of earlier batches).
    """
    if not finding.rule or len(finding.rule) > 256:
        return "rule must be 1 to 256 characters"
    if len(finding.message) > _MAX_TEXT:
        return f"message longer than {_MAX_TEXT} characters"
    if finding.severity not in _SEVERITY_NAMES or finding.severity == 0:
        return f"unknown severity {finding.severity}"
    if len(finding.event_ids) > _MAX_EVENT_IDS:
        return f"more than {_MAX_EVENT_IDS} event ids"
    if len(finding.attributes) > _MAX_ATTRIBUTES or any(
        len(k) + len(v) > _MAX_TEXT for k, v in finding.attributes.items()
    ):
        return f"more than {_MAX_ATTRIBUTES} attributes or an attribute over {_MAX_TEXT} bytes"
    if len(finding.techniques) > 32:
        return "more than 32 techniques"
    foreign = [i for i in finding.event_ids if not was_given(i)]
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


class FindingSink:
    """Writes findings as JSON Lines (flushed per batch) and shows them on a terminal."""

    def __init__(self, path: Path | None, terminal: IO[str] | None = sys.stdout) -> None:
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None
        self._terminal = terminal
        self.written = 0

    def write(self, findings: list[Finding]) -> None:
        if not findings:
            return
        if self._file is not None:
            self._file.write("".join(message_to_json(f) + "\n" for f in findings))
            self._file.flush()
        if self._terminal is not None:
            for f in findings:
                ids = ",".join(map(str, f.event_ids[:5]))
                self._terminal.write(
                    f"[{_SEVERITY_NAMES.get(f.severity, '?'):<8}] "
                    f"{f.plugin}/{f.rule}: {f.message}  (events {ids})\n"
                )
            self._terminal.flush()
        self.written += len(findings)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
