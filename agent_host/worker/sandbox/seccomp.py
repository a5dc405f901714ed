"""seccomp-bpf: the system calls a worker may not make, refused by the kernel before they run.

A denylist, as systemd's ``SystemCallFilter=~`` and Chromium's baseline policy keep one: the calls
that reach past the worker (other processes' memory, the kernel's keyrings, modules, namespaces,
the clock, mounts) and the socket families that reach past its Unix socket. A refused call fails
with EPERM, so that a plugin that merely probes keeps running and is seen doing so; the one thing
that kills is a call made in another architecture's calling convention (the i386 ``int 0x80``),
whose numbers this table does not describe. x32 numbers (the x32 bit set) fail with EPERM.

The filter is written in classic BPF by hand: the program is a straight list of "if the number is
N, return EPERM" pairs, so no jump is ever longer than one instruction.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import struct
from typing import Final

from agent_host.worker.sandbox import kernel

# From <linux/audit.h> and <linux/seccomp.h>.
_AUDIT_ARCH: Final = {"x86_64": 0xC000_003E}
_RET_KILL_PROCESS: Final = 0x8000_0000
_RET_ERRNO: Final = 0x0005_0000
_RET_ALLOW: Final = 0x7FFF_0000
_X32_SYSCALL_BIT: Final = 0x4000_0000

# Classic BPF opcodes, from <linux/filter.h>.
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JSET_K: Final = 0x45
_RET_K: Final = 0x06

# Offsets into struct seccomp_data: nr, arch, then the six arguments (low half first).
_NR: Final = 0
_ARCH: Final = 4
_ARG0: Final = 16

#: Denied on x86_64, by name: every one fails with EPERM.
DENIED: Final[dict[str, int]] = {
    # Other processes: their memory, their file descriptors, comparing their kernel objects.
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_getfd": 438,
    "kcmp": 312,
    # Mounts, namespaces and roots.
    "mount": 165,
    "umount2": 166,
    "unshare": 272,
    "setns": 308,
    "chroot": 161,
    "pivot_root": 155,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    # The kernel itself: modules, kexec, reboot, swap, accounting, its log, the clock.
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "acct": 163,
    "syslog": 103,
    "settimeofday": 164,
    "clock_settime": 227,
    "adjtimex": 159,
    "clock_adjtime": 305,
    "iopl": 172,
    "ioperm": 173,
    "quotactl": 179,
    "vhangup": 153,
    # Large attack surfaces that no detection needs.
    "bpf": 321,
    "perf_event_open": 298,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
}
_EXEC: Final = {"execve": 59, "execveat": 322}
_SOCKET: Final = 41
_SOCKETPAIR: Final = 53
_CLONE: Final = 56
_CLONE3: Final = 435

_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10
_NAMESPACE_FLAGS: Final = (
    kernel.CLONE_NEWNS
    | kernel.CLONE_NEWCGROUP
    | kernel.CLONE_NEWUTS
    | kernel.CLONE_NEWIPC
    | kernel.CLONE_NEWUSER
    | kernel.CLONE_NEWPID
    | kernel.CLONE_NEWNET
)

Instruction = tuple[int, int, int, int]


def supported() -> str | None:
    """None where a filter can be built for this machine, else why not."""
    if kernel.MACHINE not in _AUDIT_ARCH:
        return f"no system call table for {kernel.MACHINE}"
    return None


def _ret(value: int) -> Instruction:
    return (_RET_K, 0, 0, value)


def _load(offset: int) -> Instruction:
    return (_LD_W_ABS, 0, 0, offset)


def _deny_if(number: int, err: int = errno.EPERM) -> list[Instruction]:
    return [(_JEQ_K, 0, 1, number), _ret(_RET_ERRNO | err)]


def _families(number: int, families: tuple[int, ...]) -> list[Instruction]:
    """socket/socketpair: allowed for ``families`` only; the number is reloaded after."""
    checks = [(_JEQ_K, len(families) - i, 0, family) for i, family in enumerate(families)]
    block = [_load(_ARG0), *checks, _ret(_RET_ERRNO | errno.EPERM), _ret(_RET_ALLOW)]
    return [(_JEQ_K, 0, len(block), number), *block]


def program(*, network: bool, execute: bool) -> list[Instruction]:
    """The filter for a worker granted (or not) the network and executing programs."""
    arch = _AUDIT_ARCH[kernel.MACHINE]
    code: list[Instruction] = [
        _load(_ARCH),
        (_JEQ_K, 1, 0, arch),
        _ret(_RET_KILL_PROCESS),
        _load(_NR),
        (_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        _ret(_RET_ERRNO | errno.EPERM),
    ]
    denied = dict(DENIED)
    if not execute:
        denied.update(_EXEC)
    for number in denied.values():
        code += _deny_if(number)
    # clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes the C library
    # fall back to clone, whose flags it can.
    code += _deny_if(_CLONE3, errno.ENOSYS)
    families = (_AF_UNIX, _AF_INET, _AF_INET6) if network else (_AF_UNIX,)
    code += _families(_SOCKET, families)
    code += [_load(_NR), *_families(_SOCKETPAIR, (_AF_UNIX,))]
    code += [
        _load(_NR),
        (_JEQ_K, 0, 3, _CLONE),
        _load(_ARG0),
        (_JSET_K, 0, 1, _NAMESPACE_FLAGS),
        _ret(_RET_ERRNO | errno.EPERM),
        _ret(_RET_ALLOW),
    ]
    return code


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


@functools.cache
def compiled(*, network: bool, execute: bool) -> bytes:
    """The filter as the kernel reads it; the zygote compiles every variant once, before it
    forks, so that a worker only installs one."""
    code = program(network=network, execute=execute)
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


def install(*, network: bool, execute: bool) -> int:
    """Filter this thread's (and its future children's) system calls; returns the filter's
    length. Needs no_new_privs (set by the Landlock layer, or here)."""
    reason = supported()
    if reason is not None:
        raise OSError(errno.ENOSYS, reason)
    raw = compiled(network=network, execute=execute)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(raw) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    kernel.prctl(
        kernel.PR_SET_SECCOMP,
        kernel.SECCOMP_MODE_FILTER,
        ctypes.addressof(fprog),
        what="seccomp",
    )
    return len(raw) // 8
