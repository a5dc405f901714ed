"""The kernel's audit subsystem over netlink: rules in, records out (as osquery's process_events).

The audit records of a system call are written by the kernel as the call returns, with what
it saw then: the executable, every argument, the working directory, the uids, the script an
interpreter was given. Nothing is read from /proc afterwards, so a process that lives a
millisecond is described as fully as one that lives an hour.

Only one process on a machine receives audit records as the audit daemon. When none is
registered, this client registers itself, so that records are not printed to the kernel log;
when one is (auditd), it reads the multicast copy instead and leaves auditd alone. Its rules
carry the key ``agent-host`` and are deleted when it closes. It never changes the kernel's
failure mode (a full backlog is counted as lost, never a panic).
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import re
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import structlog

log = structlog.get_logger("agent_host")

NETLINK_AUDIT: Final = 9
_AUDIT_GET: Final = 1000
_AUDIT_SET: Final = 1001
_AUDIT_ADD_RULE: Final = 1011
_AUDIT_DEL_RULE: Final = 1012
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 0x1
_NLM_F_ACK: Final = 0x4
_STATUS_ENABLED: Final = 0x1
_STATUS_PID: Final = 0x4
_STATUS_BACKLOG_LIMIT: Final = 0x10
_NLGRP_READLOG: Final = 1
_FILTER_EXIT: Final = 0x04
_ALWAYS: Final = 2
_FIELD_ARCH: Final = 11
_FIELD_FILTERKEY: Final = 210
_FIELD_ARG0: Final = 200
_EQUAL: Final = 0x40000000
_BITMASK_WORDS: Final = 64
_MAX_FIELDS: Final = 64
_HEADER: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
#: struct audit_status as far as the fields this client reads and sets.
_STATUS: Final = struct.Struct("=IIIIIIII")  # mask enabled failure pid rate backlog lost backlog_n
_RECEIVE_BUFFER: Final = 32 * 1024 * 1024
RULE_KEY: Final = "agent-host"
#: Record types (<linux/audit.h>).
SYSCALL: Final = 1300
PATH: Final = 1302
SOCKADDR: Final = 1306
CWD: Final = 1307
EXECVE: Final = 1309
EOE: Final = 1320
PROCTITLE: Final = 1327
#: Records no sensor reads (the EXECVE record holds the arguments): not parsed at all.
_UNREAD: Final = frozenset({PROCTITLE})
#: Records of one event kept while its end (EOE) is awaited; bounded.
_PENDING: Final = 4096


@dataclass(frozen=True, slots=True)
class Arch:
    audit_arch: int
    syscalls: dict[str, int]


#: The system calls watched, by machine (their numbers differ).
ARCHES: Final = {
    "x86_64": Arch(
        0xC000003E,
        {"execve": 59, "execveat": 322, "connect": 42, "accept": 43, "accept4": 288, "bind": 49},
    ),
    "aarch64": Arch(
        0xC00000B7,
        {
            "execve": 221,
            "execveat": 281,
            "connect": 203,
            "accept": 202,
            "accept4": 242,
            "bind": 200,
        },
    ),
}


class AuditUnavailable(OSError):  # noqa: N818  (an OSError: the kernel said no)
    """The audit subsystem cannot be used here (no CAP_AUDIT_CONTROL, no kernel support)."""


@dataclass(slots=True)
class AuditEvent:
    """The records of one audited system call, by type, in the order they came."""

    serial: int
    timestamp: float
    records: list[tuple[int, dict[str, bytes]]] = field(default_factory=list)

    def first(self, kind: int) -> dict[str, bytes]:
        return next((fields for t, fields in self.records if t == kind), {})

    def all(self, kind: int) -> list[dict[str, bytes]]:
        return [fields for t, fields in self.records if t == kind]


_HEADER_RE: Final = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\): ?")
_FIELD_RE: Final = re.compile(rb'([A-Za-z0-9_\[\]]+)=("[^"]*"|\S*)')


def text(fields: dict[str, bytes], key: str) -> str:
    """A string field: quoted as it is, else hex-decoded (the kernel writes a value holding
    spaces, quotes or control characters in hex); "" for none or ``(null)``."""
    raw = fields.get(key, b"")
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return raw[1:-1].decode("utf-8", "replace")
    if raw in (b"", b"(null)", b"?"):
        return ""
    try:
        return bytes.fromhex(raw.decode()).decode("utf-8", "replace")
    except ValueError:
        return raw.decode("utf-8", "replace")


def number(fields: dict[str, bytes], key: str, default: int = 0) -> int:
    """A numeric field (decimal), ``default`` if absent or not a number."""
    try:
        return int(fields.get(key, b""))
    except ValueError:
        return default


def parse_record(body: bytes) -> tuple[int, float, dict[str, bytes]] | None:
    """(serial, timestamp, raw fields) of one record's text; None if it is not one."""
    match = _HEADER_RE.match(body)
    if match is None:
        return None
    seconds, millis, serial = match.groups()
    fields = {m.group(1).decode(): m.group(2) for m in _FIELD_RE.finditer(body, match.end())}
    return int(serial), int(seconds) + int(millis) / 1000, fields


#: A rule's condition on a system call argument: (argument index, value it must equal).
ArgEquals = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    """Audit ``syscalls`` at their exit, where every argument condition holds."""

    syscalls: tuple[str, ...]
    args: tuple[ArgEquals, ...] = ()

    def pack(self, arch: Arch) -> bytes:
        """struct audit_rule_data: always, at syscall exit, on ``arch``, keyed ``agent-host``."""
        mask = [0] * _BITMASK_WORDS
        for name in self.syscalls:
            number = arch.syscalls[name]
            mask[number // 32] |= 1 << (number % 32)
        key = RULE_KEY.encode()
        conditions = [
            (_FIELD_ARCH, arch.audit_arch),
            *((_FIELD_ARG0 + index, value) for index, value in self.args),
            (_FIELD_FILTERKEY, len(key)),
        ]
        padding = [0] * (_MAX_FIELDS - len(conditions))
        fields = [f for f, _ in conditions] + padding
        values = [v for _, v in conditions] + padding
        flags = [_EQUAL] * len(conditions) + padding
        layout = f"=III{_BITMASK_WORDS}I{_MAX_FIELDS}I{_MAX_FIELDS}I{_MAX_FIELDS}II"
        count = len(conditions)
        head = struct.pack(
            layout, _FILTER_EXIT, _ALWAYS, count, *mask, *fields, *values, *flags, len(key)
        )
        return head + key


def machine_arch() -> Arch | None:
    return ARCHES.get(platform.machine())


def kernel_status() -> tuple[int, ...]:
    """struct audit_status, read on a socket of its own (see ``AuditConnection.status``).

    Raises:
        OSError: the kernel refused (no CAP_AUDIT_CONTROL) or has no audit.
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as sock:
        sock.bind((0, 0))
        sock.settimeout(2.0)
        sock.sendto(_HEADER.pack(_HEADER.size, _AUDIT_GET, _NLM_F_REQUEST, 1, 0), (0, 0))
        while True:
            data = sock.recv(65536)
            kind = _HEADER.unpack_from(data)[1]
            body = data[_HEADER.size :]
            if kind == _AUDIT_GET:
                return _STATUS.unpack_from(body.ljust(_STATUS.size, b"\0"))
            if kind == _NLMSG_ERROR and struct.unpack_from("=i", body)[0]:
                code = -struct.unpack_from("=i", body)[0]
                raise OSError(code, f"audit status refused: {os.strerror(code)}")


def unavailable() -> str:
    """Why the audit subsystem cannot be used here; "" if it can (its status can be read,
    which takes what installing rules takes: CAP_AUDIT_CONTROL)."""
    if machine_arch() is None:
        return f"no system call table for {platform.machine()}"
    try:
        kernel_status()
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


class AuditConnection:
    """Audit rules installed, and the socket their records come to: the daemon's (records are
    sent to it) or a multicast reader's. Requests go through a socket of their own, so that
    no record is ever read and lost while an answer is awaited.

    Raises:
        AuditUnavailable: naming why, when the kernel refuses.
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        arch = machine_arch()
        if arch is None:
            raise AuditUnavailable(f"no system call table for {platform.machine()}")
        self._rules = [rule.pack(arch) for rule in rules]
        self._added: list[bytes] = []
        self._seq = 0
        #: (enabled, daemon pid) before this client changed them; pid -1: it never was one.
        self._previous: tuple[int, int] | None = None
        self.multicast = False
        #: Times the socket's buffer overflowed (ENOBUFS) and records were lost.
        self.overruns = 0
        try:
            self._sock = self._socket()
            self._control = self._socket()
        except OSError as exc:
            raise AuditUnavailable(f"no audit netlink socket: {exc.strerror}") from None
        try:
            self._open()
        except OSError as exc:
            self.close()
            if isinstance(exc, AuditUnavailable):
                raise
            raise AuditUnavailable(f"audit refused: {exc.strerror or exc}") from None

    @staticmethod
    def _socket(groups: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; else the default size
            sock.setsockopt(socket.SOL_SOCKET, 33, _RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        sock.bind((0, groups))
        sock.settimeout(2.0)
        return sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def _open(self) -> None:
        status = self.status()
        enabled, pid = status[1], status[3]
        for rule in self._rules:
            try:
                self._request(_AUDIT_ADD_RULE, rule)
            except OSError as exc:
                if exc.errno != errno.EEXIST:  # left by a host that was killed: ours all the same
                    raise
            self._added.append(rule)
        if pid in (0, os.getpid()):
            mask = _STATUS_ENABLED | _STATUS_PID | _STATUS_BACKLOG_LIMIT
            try:  # from the socket records are to come to: the kernel sends them to its port
                self._set(mask, 1, os.getpid(), 8192, sock=self._sock)
                self._previous = (enabled, 0)
                return
            except OSError as exc:
                if exc.errno != errno.EEXIST:  # another took the place meanwhile: share it
                    raise
        self._join_multicast()
        if not enabled:
            self._set(_STATUS_ENABLED, enabled=1)
        self._previous = (enabled, -1)

    def _join_multicast(self) -> None:
        """Read the copy every record is also sent to (needs CAP_AUDIT_READ)."""
        self._sock.close()
        self._sock = self._socket(1 << (_NLGRP_READLOG - 1))
        self.multicast = True
        log.info("audit: an audit daemon runs here; reading its multicast copy")

    def _send(self, sock: socket.socket, kind: int, payload: bytes, flags: int) -> int:
        self._seq += 1
        header = _HEADER.pack(_HEADER.size + len(payload), kind, flags, self._seq, 0)
        sock.sendto(header + payload, (0, 0))
        return self._seq

    @staticmethod
    def _replies(sock: socket.socket, seq: int) -> Iterator[tuple[int, bytes]]:
        """Messages answering ``seq`` (a record that arrives meanwhile is not an answer)."""
        while True:
            data = sock.recv(65536)
            if len(data) < _HEADER.size:
                continue
            _length, kind, _flags, reply_seq, _pid = _HEADER.unpack_from(data)
            if reply_seq == seq:
                yield kind, data[_HEADER.size :]

    def _request(self, kind: int, payload: bytes, sock: socket.socket | None = None) -> None:
        """Send a request and wait for its acknowledgement; raises OSError on refusal."""
        sock = sock or self._control
        seq = self._send(sock, kind, payload, _NLM_F_REQUEST | _NLM_F_ACK)
        for reply_kind, body in self._replies(sock, seq):
            if reply_kind == _NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                return

    def status(self) -> tuple[int, ...]:
        """struct audit_status: mask, enabled, failure, pid, rate_limit, backlog_limit, lost,
        backlog."""
        seq = self._send(self._control, _AUDIT_GET, b"", _NLM_F_REQUEST)
        for kind, body in self._replies(self._control, seq):
            if kind == _AUDIT_GET:
                return _STATUS.unpack_from(body.ljust(_STATUS.size, b"\0"))
            if kind == _NLMSG_ERROR and struct.unpack_from("=i", body)[0]:
                code = -struct.unpack_from("=i", body)[0]
                raise OSError(code, os.strerror(code))
        raise AuditUnavailable("no audit status")  # pragma: no cover

    def lost(self) -> int:
        """Records the kernel has lost (its backlog was full), since boot."""
        return self.status()[6]

    def _set(
        self,
        mask: int,
        enabled: int = 0,
        pid: int = 0,
        backlog_limit: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        payload = _STATUS.pack(mask, enabled, 0, pid, 0, backlog_limit, 0, 0)
        self._request(_AUDIT_SET, payload, sock)

    def receive(self, timeout: float) -> tuple[int, bytes] | None:
        """The next record, (type, text), or None if none came within ``timeout`` s.

        The kernel sends each record as a datagram of its own, and, as auditd expects, its
        length field counts the text without the header: so the datagram's size is trusted,
        not that field.
        """
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            return None
        if len(data) < _HEADER.size:
            return None
        kind = _HEADER.unpack_from(data)[1]
        return kind, data[_HEADER.size :].rstrip(b"\0")

    def receive_ready(self, most: int) -> list[tuple[int, bytes]]:
        """The records waiting now, (type, text) each, at most ``most``, without waiting: what
        one select found ready is read in one go, not a select a record."""
        records = []
        if self._sock.gettimeout() != 0:  # a socket with a timeout would poll first
            self._sock.settimeout(0)
        for _ in range(most):
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The socket's buffer overflowed: records were lost before we could read
                # them. Counted and said; reading goes on.
                self.overruns += 1
                log.warning("audit records lost: netlink buffer overrun", overruns=self.overruns)
                break
            if len(data) >= _HEADER.size:
                kind = _HEADER.unpack_from(data)[1]
                records.append((kind, data[_HEADER.size :].rstrip(b"\0")))
        return records

    def close(self) -> None:
        """Delete our rules, give the daemon's place back, close."""
        with contextlib.suppress(OSError):
            while self._added:
                self._request(_AUDIT_DEL_RULE, self._added.pop())
            if self._previous is not None:
                enabled, pid = self._previous
                if pid < 0:  # we only read the multicast copy: the daemon's place is not ours
                    self._set(_STATUS_ENABLED, enabled=enabled)
                else:
                    self._set(_STATUS_ENABLED | _STATUS_PID, enabled, pid)
                self._previous = None
        self._sock.close()
        self._control.close()


class Assembler:
    """Records grouped into events by their serial; an event is complete at its EOE record.

    Bounded: past ``_PENDING`` incomplete events, the oldest is handed on as it is (counted).
    """

    def __init__(self) -> None:
        self._pending: OrderedDict[int, AuditEvent] = OrderedDict()
        self.incomplete = 0

    def add(self, kind: int, body: bytes) -> list[AuditEvent]:
        if kind in _UNREAD:
            return []
        parsed = parse_record(body)
        if parsed is None:
            return []
        serial, timestamp, raw = parsed
        if kind == EOE:
            done = self._pending.pop(serial, None)
            return [done] if done is not None else []
        event = self._pending.get(serial)
        if event is None:
            event = AuditEvent(serial, timestamp, [(kind, raw)])
            if kind != SYSCALL:
                return [event]  # not of a system call (a config change): complete as it is
            self._pending[serial] = event
            if len(self._pending) > _PENDING:
                self.incomplete += 1
                return [self._pending.popitem(last=False)[1]]
            return []
        event.records.append((kind, raw))
        return []


def argv(execve: dict[str, bytes]) -> list[str]:
    """The arguments of an EXECVE record, long ones (``a1_len``, ``a1[0]`` ...) joined again."""
    result = []
    for i in range(number(execve, "argc")):
        key = f"a{i}"
        if key in execve:
            result.append(text(execve, key))
            continue
        pieces = []
        j = 0
        while f"{key}[{j}]" in execve:
            pieces.append(text(execve, f"{key}[{j}]"))
            j += 1
        result.append("".join(pieces))
    return result
