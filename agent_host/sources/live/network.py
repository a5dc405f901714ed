"""The network sensor: new listening sockets and new outbound connections, with pid and exe.

It polls the kernel's socket tables (psutil) every ``interval_s``: a connection that opens and
closes between two polls is not seen. A connection is outbound when its local port is not one
this host listens on.
"""

from __future__ import annotations

import socket
import threading
from typing import Final, NamedTuple

import psutil
import structlog

from agent_host.protocol import Event, NetworkEvent
from agent_host.sources.live.base import Emit, stamp

log = structlog.get_logger("agent_host")

_PROTOCOLS: Final = {
    (socket.AF_INET, socket.SOCK_STREAM): "tcp",
    (socket.AF_INET6, socket.SOCK_STREAM): "tcp6",
    (socket.AF_INET, socket.SOCK_DGRAM): "udp",
    (socket.AF_INET6, socket.SOCK_DGRAM): "udp6",
}


class _Key(NamedTuple):
    pid: int
    protocol: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int


def _exe(pid: int, cache: dict[int, str]) -> str:
    if pid not in cache:
        try:
            cache[pid] = psutil.Process(pid).exe()
        except psutil.Error:
            cache[pid] = ""
    return cache[pid]


class NetworkSensor:
    """Polls connections; emits LISTEN and CONNECT for new ones and CLOSE when they go."""

    name = "network"

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.ready = threading.Event()

    def _snapshot(self) -> tuple[dict[_Key, NetworkEvent.Action.ValueType], set[int]]:
        found: dict[_Key, NetworkEvent.Action.ValueType] = {}
        listening: set[int] = set()
        connections = psutil.net_connections(kind="inet")
        for c in connections:
            if c.laddr and (
                c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            ):
                listening.add(c.laddr.port)
        for c in connections:
            protocol = _PROTOCOLS.get((c.family, c.type), "")
            if c.pid is None or not c.laddr:
                continue
            if c.raddr:
                if c.laddr.port in listening or c.status not in (
                    psutil.CONN_ESTABLISHED,
                    psutil.CONN_SYN_SENT,
                    psutil.CONN_NONE,
                ):
                    continue  # an accepted inbound connection, or one winding down
                action = NetworkEvent.CONNECT
                key = _Key(c.pid, protocol, c.laddr.ip, c.laddr.port, c.raddr.ip, c.raddr.port)
            elif c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM:
                action = NetworkEvent.LISTEN
                key = _Key(c.pid, protocol, c.laddr.ip, c.laddr.port, "", 0)
            else:
                continue
            found[key] = action
        return found, listening

    def run(self, emit: Emit, stop: threading.Event) -> None:
        known, _ = self._snapshot()  # what is already open is not news
        self.ready.set()
        exes: dict[int, str] = {}
        while not stop.wait(self.interval_s):
            current, _ = self._snapshot()
            for key in current.keys() - known.keys():
                emit(self._event(key, current[key], exes))
            for key in known.keys() - current.keys():
                emit(self._event(key, NetworkEvent.CLOSE, exes))
            known = current
            if len(exes) > 4096:
                exes.clear()

    @staticmethod
    def _event(key: _Key, action: NetworkEvent.Action.ValueType, exes: dict[int, str]) -> Event:
        event = Event(
            source="sensor:network",
            network=NetworkEvent(
                action=action,
                pid=key.pid,
                exe=_exe(key.pid, exes),
                protocol=key.protocol,
                local_address=key.local_address,
                local_port=key.local_port,
                remote_address=key.remote_address,
                remote_port=key.remote_port,
            ),
        )
        stamp(event)
        return event
