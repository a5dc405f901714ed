"""Findings to the system's log: journald's own socket where there is one, else syslog.

- ``journal``: the journal's native protocol (``/run/systemd/journal/socket``), one datagram a
  finding of ``KEY=value`` lines: ``MESSAGE`` (rule and message), ``PRIORITY`` from the
  severity, ``SYSLOG_IDENTIFIER=agent-host``, and the finding's fields as ``AGENT_HOST_*``
  (``AGENT_HOST_FINDING`` holds its JSON), so that ``journalctl AGENT_HOST_RULE=...`` selects.
- ``unix:PATH`` (``/dev/log`` by default): the local format that glibc's ``syslog()`` writes
  (``<PRI>Mmm dd hh:mm:ss agent-host[PID]: MSG``, which rsyslog and syslog-ng parse on their
  local socket); ``udp://HOST:PORT``: RFC 5424. Facility ``auth`` (security events), the
  finding's JSON as the message, so that the daemons' JSON parsers take it whole.
- ``auto``: the journal if its socket exists, else ``unix:/dev/log``.

A socket that is missing or full (the daemon restarting) is the receiver away: the findings
stay spooled. A datagram too large for the socket is refused and counted, never retried
forever.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Final

import orjson

from agent_host.host.exports.sender import DeliveryError, SpooledOutput, parse

JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")
DEV_LOG: Final = "/dev/log"
_FACILITY_AUTH: Final = 4
#: Severity name to syslog priority: CRITICAL crit, HIGH err, MEDIUM warning, LOW notice, INFO
#: info.
_PRIORITY: Final = {"CRITICAL": 2, "HIGH": 3, "MEDIUM": 4, "LOW": 5, "INFO": 6}
_NOTICE: Final = 5


def resolve(target: str) -> str:
    """``auto`` made concrete for this machine; anything else as given."""
    if target != "auto":
        return target
    return "journal" if JOURNAL_SOCKET.exists() else f"unix:{DEV_LOG}"


def check_target(text: str) -> str:
    """``--syslog``'s value, or ValueError naming what it takes."""
    if text in ("auto", "journal") or (text.startswith("unix:/") and len(text) > 6):
        return text
    parsed = urllib.parse.urlsplit(text)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme == "udp" and parsed.hostname and port:
        return text
    raise ValueError(f"not a syslog target (auto, journal, unix:PATH, udp://HOST:PORT): {text!r}")


class SyslogOutput(SpooledOutput):
    """Findings (and the run's summary) to the journal or a syslog daemon."""

    kind = "syslog"
    noun = "daemon"

    def __init__(self, target: str, spool_dir: Path, max_spool_mib: int) -> None:
        super().__init__(resolve(target), spool_dir, max_spool_mib)
        self._socket: socket.socket | None = None
        self._hostname = socket.gethostname()

    def _address(self) -> tuple[int, str | tuple[str, int]]:
        if self.target == "journal":
            return socket.AF_UNIX, str(JOURNAL_SOCKET)
        if self.target.startswith("unix:"):
            return socket.AF_UNIX, self.target.removeprefix("unix:")
        parsed = urllib.parse.urlsplit(self.target)
        assert parsed.hostname is not None
        assert parsed.port is not None
        family = socket.AF_INET6 if ":" in parsed.hostname else socket.AF_INET
        return family, (parsed.hostname, parsed.port)

    async def send(self, records: list[bytes]) -> int:
        family, address = self._address()
        if self._socket is None:
            # Never blocking: a full queue (the daemon busy or restarting) is the daemon away.
            self._socket = socket.socket(
                family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        refused = 0
        for taken, line in enumerate(records):
            kind, _, body = parse(line)
            datagram = self._datagram(kind, body)
            try:
                self._socket.sendto(datagram, address)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    refused += kind == "findings"
                    continue
                raise DeliveryError(f"{address}: {exc.strerror or exc}", taken) from exc
        return refused

    def _datagram(self, kind: str, body: bytes) -> bytes:
        if self.target == "journal":
            return self._journal(kind, body)
        priority = _FACILITY_AUTH * 8 + _priority(kind, body)
        now = time.localtime()
        if self.target.startswith("unix:"):
            stamp = time.strftime("%b %d %H:%M:%S", now)
            return f"<{priority}>{stamp} agent-host[{os.getpid()}]: ".encode() + body
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", now)
        stamp = f"{stamp[:-2]}:{stamp[-2:]}"
        header = f"<{priority}>1 {stamp} {self._hostname} agent-host {os.getpid()} {kind} - "
        return header.encode() + body

    def _journal(self, kind: str, body: bytes) -> bytes:
        fields: dict[str, str] = {
            "PRIORITY": str(_priority(kind, body)),
            "SYSLOG_IDENTIFIER": "agent-host",
            "AGENT_HOST_KIND": kind,
        }
        if kind == "findings":
            finding = orjson.loads(body)
            fields["MESSAGE"] = f"{finding.get('rule', '')}: {finding.get('message', '')}"
            for name in ("id", "plugin", "plugin_version", "rule", "severity"):
                if name in finding:
                    fields[f"AGENT_HOST_{name.upper()}"] = str(finding[name])
        else:
            fields["MESSAGE"] = "agent-host run summary"
        data = bytearray()
        for key, value in fields.items():
            data += _journal_field(key, value.encode())
        data += _journal_field(
            "AGENT_HOST_FINDING" if kind == "findings" else "AGENT_HOST_SUMMARY", body
        )
        return bytes(data)

    async def disconnect(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


def _priority(kind: str, body: bytes) -> int:
    if kind != "findings":
        return _NOTICE
    severity = orjson.loads(body).get("severity", "INFO")
    return _PRIORITY.get(severity, _NOTICE)


def _journal_field(key: str, value: bytes) -> bytes:
    """One field of the native protocol: ``KEY=value\\n``, or, where the value holds a newline,
    ``KEY\\n``, its length as 64-bit little-endian, the value, ``\\n``."""
    if b"\n" not in value:
        return key.encode() + b"=" + value + b"\n"
    return key.encode() + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"
