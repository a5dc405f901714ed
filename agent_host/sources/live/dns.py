"""Which name each address was looked up as: DNS answers seen on this machine's interfaces.

A connection carries only an address; the name a process resolved to get it (what Sigma's
``DestinationHostname`` rules are about: ngrok tunnels, mining pools) was in the DNS answer it
received just before. As root, a packet socket with a kernel filter that passes only UDP from
port 53 (IPv4 and IPv6, loopback included: a local resolver's answers count) reads those
answers; each A and AAAA record maps its address to the name asked for, in a bounded table
the syscall sensor consults when it reports a connection. DNS over TCP, DoT or DoH is not seen.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections import OrderedDict
from typing import Any, Final

_ETH_P_ALL: Final = 0x0003
_SO_ATTACH_FILTER: Final = 26
_CAPACITY: Final = 16_384
_TYPES: Final = {1: 4, 28: 16}  # A, AAAA -> address length


_OPCODES: Final = {
    "ldb": 0x30,  # A = byte at k
    "ldh": 0x28,  # A = half-word at k
    "ldxb_msh": 0xB1,  # X = 4 * (byte at k & 0xf): the IPv4 header's length
    "ldh_x": 0x48,  # A = half-word at X + k
    "and": 0x54,
    "jeq": 0x15,
    "jset": 0x45,
    "ret": 0x06,
}
#: Over a cooked (SOCK_DGRAM) packet, which starts at the IP header: accept UDP from port 53 of
#: an unfragmented IPv4 packet or an IPv6 packet without extension headers; drop the rest in the
#: kernel. A string is a label; a jump names the labels it goes to when true and when false.
_FILTER: Final[tuple[str | tuple[Any, ...], ...]] = (
    ("ldb", 0),
    ("and", 0xF0),
    ("jeq", 0x40, "v4", "v6"),
    "v4",
    ("ldb", 9),
    ("jeq", 17, "v4 udp", "drop"),
    "v4 udp",
    ("ldh", 6),
    ("jset", 0x1FFF, "drop", "v4 port"),  # a fragment
    "v4 port",
    ("ldxb_msh", 0),
    ("ldh_x", 0),
    ("jeq", 53, "accept", "drop"),
    "v6",
    ("jeq", 0x60, "v6 udp", "drop"),
    "v6 udp",
    ("ldb", 6),
    ("jeq", 17, "v6 port", "drop"),
    "v6 port",
    ("ldh", 40),
    ("jeq", 53, "accept", "drop"),
    "accept",
    ("ret", 0xFFFF),
    "drop",
    ("ret", 0),
)


def _program() -> tuple[bytes, int]:
    """``_FILTER`` as ``struct sock_filter`` instructions, its labels turned into offsets."""
    instructions = [op for op in _FILTER if not isinstance(op, str)]
    at: dict[str, int] = {}  # label -> the index of the instruction after it
    count = 0
    for op in _FILTER:
        if isinstance(op, str):
            at[op] = count
        else:
            count += 1
    program = []
    for index, (name, k, *targets) in enumerate(instructions):
        true, false = (at[label] - index - 1 for label in targets) if targets else (0, 0)
        program.append(struct.pack("HBBI", _OPCODES[name], true, false, k))
    return b"".join(program), len(program)


def _name(message: bytes, offset: int, depth: int = 0) -> tuple[str, int]:
    """A (possibly compressed) domain name at ``offset``; the offset after it."""
    labels: list[str] = []
    while True:
        if offset >= len(message) or depth > 16:
            raise ValueError("name runs past the message")
        length = message[offset]
        if length & 0xC0 == 0xC0:
            pointer = struct.unpack_from("!H", message, offset)[0] & 0x3FFF
            rest, _ = _name(message, pointer, depth + 1)
            labels.append(rest)
            return ".".join(x for x in labels if x), offset + 2
        if length == 0:
            return ".".join(labels), offset + 1
        labels.append(message[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def answers(message: bytes) -> list[tuple[str, str]]:
    """(address, name asked for) of each A and AAAA record of a DNS response."""
    if len(message) < 12:
        return []
    _, flags, questions, records = struct.unpack_from("!HHHH", message)
    if not flags & 0x8000 or questions != 1:
        return []
    asked, offset = _name(message, 12)
    offset += 4
    found = []
    for _ in range(records):
        _, offset = _name(message, offset)
        kind, _, _, length = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        data = message[offset : offset + length]
        offset += length
        if _TYPES.get(kind) == len(data):
            found.append((str(ipaddress.ip_address(data)), asked.lower()))
    return found


def _udp_payload(packet: bytes) -> bytes:
    start = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40  # IPv6: a fixed 40
    return packet[start + 8 :]


class DnsAnswers:
    """The names addresses were looked up as, newest kept, from a filtered packet socket."""

    def __init__(self, capacity: int = _CAPACITY) -> None:
        self._names: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self.malformed = 0
        program, length = _program()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
        buffer = ctypes.create_string_buffer(program)
        self._buffer = buffer  # kept alive while the socket holds a pointer to it
        fprog = struct.pack("HL", length, ctypes.addressof(buffer))
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> None:
        """Take every answer queued now."""
        while True:
            try:
                packet = self.sock.recv(65535)
            except BlockingIOError:
                return
            try:
                found = answers(_udp_payload(packet))
            except (ValueError, struct.error, IndexError):
                self.malformed += 1
                continue
            for address, name in found:
                self._names[address] = name
                self._names.move_to_end(address)
                if len(self._names) > self._capacity:
                    self._names.popitem(last=False)

    def name_of(self, address: str) -> str:
        return self._names.get(address, "")
