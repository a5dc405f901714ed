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
from typing import Final

_ETH_P_ALL: Final = 0x0003
_SO_ATTACH_FILTER: Final = 26
_CAPACITY: Final = 16_384
_TYPES: Final = {1: 4, 28: 16}  # A, AAAA -> address length


def _program() -> tuple[bytes, int]:
    """The kernel filter, assembled with labels: over a cooked (SOCK_DGRAM) packet, which
    starts at the IP header, accept UDP from port 53 of an unfragmented IPv4 packet or an IPv6
    packet without extension headers; drop everything else in the kernel."""
    ops = [
        # IPv4
        ("ldb", 0),
        ("and", 0xF0),
        ("jeq", 0x40, "v4", "v6"),
        ("label", "v4"),
        ("ldb", 9),
        ("jeq", 17, "v4udp", "drop"),
        ("label", "v4udp"),
        ("ldh", 6),
        ("jset", 0x1FFF, "drop", "v4port"),
        ("label", "v4port"),
        ("ldxb_hdr", 0),
        ("ldh_x", 0),
        ("jeq", 53, "accept", "drop"),
        # IPv6
        ("label", "v6"),
        ("jeq", 0x60, "v6udp0", "drop"),
        ("label", "v6udp0"),
        ("ldb", 6),
        ("jeq", 17, "v6port", "drop"),
        ("label", "v6port"),
        ("ldh", 40),
        ("jeq", 53, "accept", "drop"),
        ("label", "accept"),
        ("ret", 0xFFFF),
        ("label", "drop"),
        ("ret", 0),
    ]
    codes = {"ldb": 0x30, "ldh": 0x28, "and": 0x54, "jeq": 0x15, "jset": 0x45, "ret": 0x06}
    positions: dict[str, int] = {}
    count = 0
    for op in ops:
        if op[0] == "label":
            positions[str(op[1])] = count
        else:
            count += 1
    program = []
    index = 0
    for op in ops:
        name = str(op[0])
        if name == "label":
            continue
        if name in ("jeq", "jset"):
            true, false = (positions[str(op[2])] - index - 1, positions[str(op[3])] - index - 1)
            program.append((codes[name], true, false, int(op[1])))
        elif name == "ldxb_hdr":
            program.append((0xB1, 0, 0, 0))
        elif name == "ldh_x":
            program.append((0x48, 0, 0, 0))
        else:
            program.append((codes[name], 0, 0, int(op[1])))
        index += 1
    return b"".join(struct.pack("HBBI", *insn) for insn in program), len(program)


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
        self._program = program  # kept alive while the socket holds a pointer to it
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
        buffer = ctypes.create_string_buffer(program)
        self._buffer = buffer
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
