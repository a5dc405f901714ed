"""The process sensor: exec and exit of every process, as they happen.

When privileged (CAP_NET_ADMIN), it listens to the kernel's process events connector (netlink,
``NETLINK_CONNECTOR`` / ``CN_IDX_PROC``), which reports even a process that lives a millisecond,
and enriches each exec from /proc right away. Otherwise it falls back to polling the process
table with psutil and says so once. A process gone before /proc is read still gives an event,
with what was known.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Final

import psutil
import structlog

from agent_host.protocol import Event, ProcessEvent
from agent_host.sources.live.base import Emit, stamp

log = structlog.get_logger("agent_host")

# From <linux/connector.h> and <linux/cn_proc.h>.
_NETLINK_CONNECTOR: Final = 11
_CN_IDX_PROC: Final = 1
_CN_VAL_PROC: Final = 1
_PROC_CN_MCAST_LISTEN: Final = 1
_PROC_CN_MCAST_IGNORE: Final = 2
_NLMSG_DONE: Final = 3
_PROC_EVENT_FORK: Final = 0x00000001
_PROC_EVENT_EXEC: Final = 0x00000002
_PROC_EVENT_EXIT: Final = 0x80000000
_NLMSG_HEADER: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG: Final = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEADER: Final = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK: Final = struct.Struct("=IIII")  # parent pid, parent tgid, child pid, child tgid
_EXEC: Final = struct.Struct("=II")  # pid, tgid
_EXIT: Final = struct.Struct("=IIII")  # pid, tgid, exit_code, exit_signal
_EVENT_OFFSET: Final = _NLMSG_HEADER.size + _CN_MSG.size
_RECEIVE_BUFFER: Final = 8 * 1024 * 1024


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline")
    if not raw:
        return []
    return [part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0")]


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _status(pid: int) -> tuple[int, int | None, int | None]:
    """(ppid, real uid, effective uid) from /proc/PID/status; (0, None, None) if it is gone."""
    raw = _read(f"/proc/{pid}/status")
    ppid, uid, euid = 0, None, None
    for line in (raw or b"").splitlines():
        if line.startswith(b"PPid:"):
            ppid = int(line.split()[1])
        elif line.startswith(b"Uid:"):
            uid, euid = int(line.split()[1]), int(line.split()[2])
    return ppid, uid, euid


def exe_kind(exe: str) -> str:
    """How the kernel named the executable: a memfd (fileless execution), a deleted file, or
    one on disk ("")."""
    if exe.startswith(("/memfd:", "memfd:")):
        return "memfd"
    if exe.endswith(" (deleted)"):
        return "deleted"
    return ""


def describe(pid: int, parent: int = 0, origin: str = "connector") -> ProcessEvent:
    """A START event for ``pid`` with whatever /proc still tells: never raises.

    A short-lived process may be gone before all of it is read, so the most telling parts are
    read first. ``parent``, if known from elsewhere (a fork event), stands in for /proc's.
    """
    process = ProcessEvent(action=ProcessEvent.START, pid=pid, origin=origin)
    process.exe = _link(f"/proc/{pid}/exe")
    process.cmdline.extend(_cmdline(pid))
    ppid, uid, euid = _status(pid)
    process.cwd = _link(f"/proc/{pid}/cwd")
    process.name = (_read(f"/proc/{pid}/comm") or b"").decode("utf-8", "replace").rstrip("\n")
    ppid = ppid or parent
    process.ppid = ppid
    if uid is not None:
        process.uid = uid
        process.user = user_name(uid)
    if euid is not None:
        process.euid = euid
    auid = (_read(f"/proc/{pid}/loginuid") or b"").strip()
    process.auid = int(auid) if auid.isdigit() else 0xFFFFFFFF
    process.exe_kind = exe_kind(process.exe)
    if ppid:
        process.parent_exe = _link(f"/proc/{ppid}/exe")
        process.parent_cmdline.extend(_cmdline(ppid))
    if not process.exe and process.cmdline:
        process.exe = process.cmdline[0]  # a kernel thread or a race: the best we know
    return process


def exit_event(pid: int, exe: str, status: int) -> Event:
    return _event(
        ProcessEvent(action=ProcessEvent.EXIT, pid=pid, exe=exe, exit_code=status),
        "sensor:process",
    )


def _event(process: ProcessEvent, source: str) -> Event:
    event = Event(source=source, process=process)
    stamp(event)
    return event


class NetlinkProcessSensor:
    """Exec and exit from the kernel's process events connector (needs CAP_NET_ADMIN).

    With ``execs=False`` it reports exits only, of the processes ``started`` names (the
    syscall sensor describes execs from their audit records).
    """

    name = "process"

    def __init__(self, execs: bool = True) -> None:
        self._execs = execs
        #: With ``execs=False``: an exit that came before the exec's description did (audit
        #: records travel slower than connector events), as (pid, exit status).
        self.early_exits: OrderedDict[int, tuple[float, int]] = OrderedDict()
        self._exes: dict[int, str] = {}  # pid -> exe at exec, for exit events; bounded
        self._parents: dict[int, int] = {}  # pid -> parent, from fork events; bounded
        self.overruns = 0
        self.ready = threading.Event()

    @staticmethod
    def available() -> bool:
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR) as s:
                s.bind((0, _CN_IDX_PROC))
                return True
        except OSError:
            return False

    def _subscribe(self, sock: socket.socket, op: int) -> None:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        sock.send(_NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(cn), _NLMSG_DONE, 0, 0, 0) + cn)

    def open(self) -> socket.socket:
        """A connector socket, subscribed."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; else the default size
            sock.setsockopt(socket.SOL_SOCKET, 33, _RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        sock.bind((0, _CN_IDX_PROC))
        sock.settimeout(0.25)
        self._subscribe(sock, _PROC_CN_MCAST_LISTEN)
        return sock

    def close(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._subscribe(sock, _PROC_CN_MCAST_IGNORE)
        sock.close()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        sock = self.open()
        self.ready.set()
        try:
            while not stop.is_set():
                self.receive_once(sock, emit)
        finally:
            self.close(sock)

    def started(self, pid: int, exe: str) -> None:
        """``pid`` exec'd ``exe``: its exit will be news."""
        if len(self._exes) > 65_536:
            self._exes.clear()
        self._exes[pid] = exe

    def receive_ready(self, sock: socket.socket, emit: Emit, most: int = 256) -> None:
        """Read the datagrams waiting now, at most ``most``, without waiting."""
        if sock.gettimeout() != 0:  # a socket with a timeout would poll first
            sock.settimeout(0)
        for _ in range(most):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != 105:
                    raise
                self._overrun()
                return
            self._handle_datagram(data, emit)

    def _overrun(self) -> None:
        """ENOBUFS: the kernel dropped events we were too slow for; counted and said."""
        self.overruns += 1
        log.warning("process events lost: netlink buffer overrun", overruns=self.overruns)

    def receive_once(self, sock: socket.socket, emit: Emit) -> None:
        """Read one datagram of process events (waiting at most the socket's timeout)."""
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return
        except OSError as exc:
            if exc.errno == 105:  # ENOBUFS: the kernel dropped events we were too slow for
                self._overrun()
                return
            raise
        self._handle_datagram(data, emit)

    def _handle_datagram(self, data: bytes, emit: Emit) -> None:
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length = _NLMSG_HEADER.unpack_from(data, offset)[0]
            if length < _EVENT_OFFSET + _EVENT_HEADER.size:
                break
            self._handle(data, offset, emit)
            offset += (length + 3) & ~3

    def _handle(self, data: bytes, offset: int, emit: Emit) -> None:
        base = offset + _EVENT_OFFSET
        what = _EVENT_HEADER.unpack_from(data, base)[0]
        body = base + _EVENT_HEADER.size
        if what == _PROC_EVENT_FORK and self._execs:
            _parent_pid, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data, body)
            if child_pid == child_tgid:  # a new process, not a new thread
                if len(self._parents) > 65_536:
                    self._parents.clear()
                self._parents[child_tgid] = parent_tgid
        elif what == _PROC_EVENT_EXEC:
            pid, tgid = _EXEC.unpack_from(data, body)
            if pid != tgid:
                return  # a thread calling exec: reported for its process
            if not self._execs:
                self._exes.setdefault(pid, "")  # described when its audit records come
                return
            process = describe(pid, self._parents.pop(pid, 0))
            self.started(pid, process.exe)
            emit(_event(process, "sensor:process"))
        elif what == _PROC_EVENT_EXIT:
            pid, tgid, exit_code, _signal = _EXIT.unpack_from(data, body)
            if pid != tgid:
                return  # a thread ended, not the process
            self._parents.pop(pid, None)
            if pid not in self._exes:
                return  # never saw it start (it predates us, or it never exec'd): not news
            exe = self._exes.pop(pid)
            status = exit_code >> 8 if exit_code & 0x7F == 0 else -(exit_code & 0x7F)
            if not exe and not self._execs:
                if len(self.early_exits) >= 65_536:
                    self.early_exits.popitem(last=False)
                self.early_exits[pid] = (time.monotonic(), status)
                return
            emit(exit_event(pid, exe, status))


class PollingProcessSensor:
    """Exec and exit by diffing the process table every ``interval_s`` (unprivileged)."""

    name = "process"

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.ready = threading.Event()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        known = {p.pid: _link(f"/proc/{p.pid}/exe") for p in psutil.process_iter()}
        self.ready.set()
        while not stop.wait(self.interval_s):
            current = set(psutil.pids())
            for pid in sorted(current - known.keys()):
                process = describe(pid, origin="poll")
                known[pid] = process.exe
                emit(_event(process, "sensor:process"))
            for pid in sorted(known.keys() - current):
                exe = known.pop(pid)
                emit(
                    _event(
                        ProcessEvent(action=ProcessEvent.EXIT, pid=pid, exe=exe), "sensor:process"
                    )
                )


def process_sensor(poll_interval_s: float = 0.5) -> NetlinkProcessSensor | PollingProcessSensor:
    """The best process sensor this host allows."""
    if NetlinkProcessSensor.available():
        return NetlinkProcessSensor()
    log.warning(
        "process sensor: netlink process events need CAP_NET_ADMIN; polling instead "
        "(short-lived processes may be missed)",
        interval_s=poll_interval_s,
    )
    return PollingProcessSensor(poll_interval_s)
