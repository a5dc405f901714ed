"""The syscall sensor: exec, connect, accept and bind as the kernel audits them (``audit.py``).

An exec is described from its own audit records: the executable, every argument, the working
directory, uid, euid and login uid, the kernel's name for the process (``comm``), and the
script when the kernel ran an interpreter; a memfd or deleted executable is named as such.
Exits still come from the process events connector (auditing every exit would cost more than
it tells). A connect, accept or bind of an IPv4 or IPv6 socket is one event each, with the
addresses from the call itself: a connection that lasts a millisecond, or a refused one (a
port scan), is seen.

The audit rules select IP sockets by the address length argument (16 or 28 bytes), so that
the flood of Unix-socket connects (name services, the host's own gRPC) never reaches us.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from agent_host.protocol import Event, NetworkEvent, ProcessEvent
from agent_host.sources.live import audit
from agent_host.sources.live.audit import (
    CWD,
    EXECVE,
    PATH,
    SOCKADDR,
    SYSCALL,
    AuditConnection,
    AuditEvent,
    Rule,
    number,
    text,
)
from agent_host.sources.live.base import ROUND_GAP_S, Emit, emit_all, stamp
from agent_host.sources.live.dns import DnsAnswers
from agent_host.sources.live.execs import ExecTable
from agent_host.sources.live.process import (
    NetlinkProcessSensor,
    _cmdline,
    _link,
    exe_kind,
    exit_event,
    user_name,
)
from agent_host.sources.live.recent import Recent

log = structlog.get_logger("agent_host")

_EXEC_CALLS: Final = ("execve", "execveat")
_INET_CALLS: Final = ("connect", "bind")
_ACCEPT_CALLS: Final = ("accept", "accept4")
_SOCKADDR_IN: Final = 16
_SOCKADDR_IN6: Final = 28
_EINPROGRESS: Final = 115
#: How often the kernel's count of lost records is read.
_LOST_EVERY_S: Final = 5.0
#: How long a parent's exe and command line, and an interpreter's real path, are remembered.
_PARENT_TTL_S: Final = 1.0
_RESOLVED_TTL_S: Final = 5.0
#: Audit records read after one select before the next: a burst is read in rounds this big.
_RECORDS_A_ROUND: Final = 512
#: How long an exit waits for the audit records of its exec before it is reported without.
_EXEC_RECORD_WAIT_S: Final = 2.0


def rules(process: bool, network: bool) -> tuple[Rule, ...]:
    found: list[Rule] = []
    if process:
        found.append(Rule(_EXEC_CALLS))
    if network:
        found += [
            Rule(_INET_CALLS, ((2, _SOCKADDR_IN),)),
            Rule(_INET_CALLS, ((2, _SOCKADDR_IN6),)),
            Rule(_ACCEPT_CALLS),
        ]
    return tuple(found)


def _script(
    paths: list[dict[str, bytes]], exe: str, cwd: str, resolve: Callable[[str], str]
) -> str:
    """The script of an exec through an interpreter: the first PATH record is the file that
    was asked for, the second the interpreter the kernel then opened (for an ELF binary, the
    second is its loader instead)."""
    if len(paths) < 2:
        return ""
    asked, opened = text(paths[0], "name"), text(paths[1], "name")
    # The kernel's exe is resolved already: only the name the interpreter was opened by is.
    if not asked or (opened != exe and resolve(os.path.join(cwd, opened)) != exe):
        return ""
    return os.path.normpath(os.path.join(cwd, asked))


def _parent_from_proc(ppid: int) -> tuple[str, list[str]]:
    return _link(f"/proc/{ppid}/exe"), _cmdline(ppid)


def process_event(
    record: AuditEvent,
    parent_of: Callable[[int], tuple[str, list[str]]] = _parent_from_proc,
    resolve: Callable[[str], str] = os.path.realpath,
) -> ProcessEvent | None:
    """The START event of an audited exec; None for one that failed. ``parent_of`` (the
    parent's exe and command line, from /proc) and ``resolve`` (a path's real path) may
    remember what they read a moment ago."""
    syscall = record.first(SYSCALL)
    if syscall.get("success") != b"yes":
        return None
    pid, ppid = number(syscall, "pid"), number(syscall, "ppid")
    exe = text(syscall, "exe")
    cwd = text(record.first(CWD), "cwd")
    process = ProcessEvent(
        action=ProcessEvent.START,
        pid=pid,
        ppid=ppid,
        exe=exe,
        cwd=cwd,
        uid=number(syscall, "uid"),
        euid=number(syscall, "euid"),
        auid=number(syscall, "auid", 0xFFFFFFFF),
        name=text(syscall, "comm"),
        exe_kind=exe_kind(exe),
        origin="audit",
    )
    process.user = user_name(process.uid)
    process.cmdline.extend(audit.argv(record.first(EXECVE)))
    process.script = _script(record.all(PATH), exe, cwd, resolve)
    if ppid:  # the parent is still there far more often than a short-lived child
        process.parent_exe, parent_cmdline = parent_of(ppid)
        process.parent_cmdline.extend(parent_cmdline)
    return process


def _address(saddr: bytes) -> tuple[str, str, int] | None:
    """(protocol family name, address, port) of a SOCKADDR record's hex; None if not IP."""
    try:
        raw = bytes.fromhex(saddr.decode())
    except ValueError:
        return None
    family = int.from_bytes(raw[:2], "little") if len(raw) >= 2 else 0
    if family == socket.AF_INET and len(raw) >= 8:
        return "ip", str(ipaddress.IPv4Address(raw[4:8])), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        text_address = str(mapped) if mapped is not None else str(address)
        return "ip6", text_address, int.from_bytes(raw[2:4], "big")
    return None


def network_event(record: AuditEvent, calls: dict[int, str]) -> NetworkEvent | None:
    """The event of an audited connect, accept or bind of an IP socket; None otherwise.

    A connect that failed is still reported (a refused connection is what a port scan is made
    of); a bind or accept that failed is not.
    """
    syscall = record.first(SYSCALL)
    call = calls.get(number(syscall, "syscall"), "")
    sockaddr = record.first(SOCKADDR)
    address = _address(sockaddr.get("saddr", b"")) if sockaddr else None
    if address is None:
        return None
    succeeded = syscall.get("success") == b"yes"
    if call == "connect":
        if not succeeded and -number(syscall, "exit") == 0:
            return None
        action = NetworkEvent.CONNECT
    elif call in ("accept", "accept4") and succeeded:
        action = NetworkEvent.ACCEPT
    elif call == "bind" and succeeded:
        action = NetworkEvent.LISTEN
    else:
        return None
    family, host, port = address
    event = NetworkEvent(
        action=action,
        pid=number(syscall, "pid"),
        exe=text(syscall, "exe"),
        protocol=family,
        uid=number(syscall, "uid"),
        origin="audit",
    )
    if action == NetworkEvent.LISTEN:
        event.local_address, event.local_port = host, port
    else:
        event.remote_address, event.remote_port = host, port
    return event


class SyscallSensor:
    """Exec (and, with ``network``, connect/accept/bind) from the kernel's audit records.
    Its rules are installed when it starts running and deleted when it stops."""

    def __init__(
        self, process: bool = True, network: bool = False, execs: ExecTable | None = None
    ) -> None:
        self.process, self.network = process, network
        self.execs = execs
        self.name = "+".join(n for n, on in (("process", process), ("network", network)) if on)
        self.ready = threading.Event()
        self.lost = 0
        arch = audit.machine_arch()
        self._calls = {number: name for name, number in arch.syscalls.items()} if arch else {}
        self._exits = NetlinkProcessSensor(execs=False) if process else None
        self._dns: DnsAnswers | None = None
        self._parents: Recent[int, tuple[str, list[str]]] = Recent(_PARENT_TTL_S)
        self._resolved: Recent[str, str] = Recent(_RESOLVED_TTL_S)

    def _parent_of(self, ppid: int) -> tuple[str, list[str]]:
        return self._parents.remembered(ppid, lambda: _parent_from_proc(ppid))

    def _resolve(self, path: str) -> str:
        return self._resolved.remembered(path, lambda: os.path.realpath(path))

    def _emit_record(self, record: AuditEvent, emit: Emit) -> None:
        syscall = record.first(SYSCALL)
        if not syscall or number(syscall, "pid") == os.getpid():
            return  # the host's own calls are not this machine's activity
        name = self._calls.get(number(syscall, "syscall"), "")
        if name in _EXEC_CALLS:
            process = process_event(record, self._parent_of, self._resolve)
            if process is not None:
                self._parents.forget(process.pid)  # a parent that execs is another program
                if self.execs is not None:
                    self._remember(process, self.execs)
                event = Event(source="sensor:process", process=process)
                stamp(event, int(record.timestamp * 1e9))
                emit(event)
                self._after_start(process, emit)
        elif self.network:
            network = network_event(record, self._calls)
            if network is not None:
                if self._dns is not None and network.remote_address:
                    network.remote_hostname = self._dns.name_of(network.remote_address)
                event = Event(source="sensor:network", network=network)
                stamp(event, int(record.timestamp * 1e9))
                emit(event)

    @staticmethod
    def _remember(process: ProcessEvent, execs: ExecTable) -> None:
        """Keep its exec for those who ask later; fill its parent from one kept earlier."""
        execs.record(process.pid, process.uid, process.exe, tuple(process.cmdline))
        if process.ppid and not process.parent_exe:
            parent = execs.lookup(process.ppid)
            if parent is not None:
                process.parent_exe = parent.exe
                process.parent_cmdline.extend(parent.cmdline)

    def _after_start(self, process: ProcessEvent, emit: Emit) -> None:
        """Its exit is news now; or it is over already (the connector told first): say so."""
        if self._exits is None:
            return
        early = self._exits.early_exits.pop(process.pid, None)
        if early is None:
            self._exits.started(process.pid, process.exe)
        else:
            emit(exit_event(process.pid, process.exe, early[1]))

    def _flush_early_exits(self, emit: Emit, now: float) -> None:
        """Exits whose exec was never described (its records lost): reported as they are."""
        if self._exits is None:
            return
        early = self._exits.early_exits
        while early and now - next(iter(early.values()))[0] > _EXEC_RECORD_WAIT_S:
            pid, (_, status) = early.popitem(last=False)
            emit(exit_event(pid, "", status))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        connection = AuditConnection(rules(self.process, self.network))
        assembler = audit.Assembler()
        exits = self._exits.open() if self._exits is not None else None
        self._dns = self._open_dns() if self.network else None
        if self.execs is not None and self.process:
            self.execs.filled.set()
        self.ready.set()
        started = connection.lost()
        next_check = 0.0
        try:
            while not stop.is_set():
                readable = [connection.fileno()] + ([exits.fileno()] if exits else [])
                ready = self._wait(readable)
                # What this round read is handed over together (one lock, one wakeup).
                events: list[Event] = []
                if exits is not None and exits.fileno() in ready:
                    assert self._exits is not None
                    self._exits.receive_ready(exits, events.append)
                if connection.fileno() in ready:
                    for record in connection.receive_ready(_RECORDS_A_ROUND):
                        for done in assembler.add(*record):
                            self._emit_record(done, events.append)
                emit_all(emit, events)
                if ready:
                    stop.wait(ROUND_GAP_S)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _LOST_EVERY_S
                    self._count_lost(connection, started)
                    self._flush_early_exits(emit, now)
        finally:
            if self.execs is not None:
                self.execs.filled.clear()
            if exits is not None:
                exits.close()
            if self._dns is not None:
                self._dns.close()
            connection.close()

    def _wait(self, readable: list[int]) -> list[int]:
        """What is ready to read; DNS answers read at once (an answer comes before the
        connect it serves)."""
        dns = self._dns
        ready, _, _ = select.select([*readable, *([dns.fileno()] if dns else [])], [], [], 0.25)
        if dns is not None and dns.fileno() in ready:
            dns.read()
        return ready

    @staticmethod
    def _open_dns() -> DnsAnswers | None:
        try:
            return DnsAnswers()
        except OSError as exc:
            log.warning(
                "syscall sensor: DNS answers unavailable; connections carry no hostname",
                reason=exc.strerror or str(exc),
            )
            return None

    def _count_lost(self, connection: AuditConnection, started: int) -> None:
        try:
            lost = connection.lost() - started
        except OSError:
            return
        if lost > self.lost:
            log.warning("audit records lost by the kernel (backlog full)", lost=lost)
        self.lost = lost


def syscall_sensor(
    process: bool, network: bool, execs: ExecTable | None = None
) -> SyscallSensor | None:
    """The syscall sensor for what is asked; None (and why, in the log) where the audit
    subsystem cannot be had, for the fallbacks to take over."""
    if not (process or network):
        return None
    problem = audit.unavailable()
    if problem:
        log.warning(
            "syscall sensor unavailable; process and network events from the fallbacks "
            "(the connector and /proc; socket table polling): short-lived processes and "
            "connections may be missed or lack details",
            reason=problem,
        )
        return None
    return SyscallSensor(process=process, network=network, execs=execs)
