"""The system calls the sandbox needs and ``os`` does not offer (on Python 3.11), through libc.

Each wrapper raises OSError with the call's name, as ``os`` does, so that a layer that cannot be
applied says which call the kernel refused and why.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import TYPE_CHECKING, Final, TypeAlias

_libc = ctypes.CDLL(None, use_errno=True)

# From <linux/sched.h>.
CLONE_NEWNS: Final = 0x0002_0000
CLONE_NEWCGROUP: Final = 0x0200_0000
CLONE_NEWUTS: Final = 0x0400_0000
CLONE_NEWIPC: Final = 0x0800_0000
CLONE_NEWUSER: Final = 0x1000_0000
CLONE_NEWPID: Final = 0x2000_0000
CLONE_NEWNET: Final = 0x4000_0000

# From <linux/mount.h>.
MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 0x4_0000
MNT_DETACH: Final = 0x2
MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
_AT_FDCWD: Final = -100
_AT_RECURSIVE: Final = 0x8000

# From <linux/prctl.h>.
PR_SET_PDEATHSIG: Final = 1
PR_SET_DUMPABLE: Final = 4
PR_CAPBSET_DROP: Final = 24
PR_SET_SECUREBITS: Final = 28
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_SECCOMP: Final = 22
SECCOMP_MODE_FILTER: Final = 2

#: The calls numbered by architecture (the newer ones share one number on every architecture).
_SYSCALLS: Final[dict[str, dict[str, int]]] = {
    "x86_64": {"pivot_root": 155},
    "aarch64": {"pivot_root": 41},
}
SYS_MOUNT_SETATTR: Final = 442
SYS_LANDLOCK_CREATE_RULESET: Final = 444
SYS_LANDLOCK_ADD_RULE: Final = 445
SYS_LANDLOCK_RESTRICT_SELF: Final = 446

MACHINE: Final = platform.machine()


def _checked(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


if TYPE_CHECKING:  # ctypes' private base classes exist for the type checker only
    SyscallArgument: TypeAlias = int | bytes | ctypes._CData | ctypes._CArgObject | None


def syscall(number: int, *args: SyscallArgument, what: str) -> int:
    return _checked(int(_libc.syscall(ctypes.c_long(number), *args)), what)


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    return _checked(
        int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0)),
        what,
    )


def unshare(flags: int) -> None:
    _checked(int(_libc.unshare(ctypes.c_int(flags))), "unshare")


def setns(fd: int, nstype: int) -> None:
    _checked(int(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype))), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _checked(int(_libc.sethostname(raw, ctypes.c_size_t(len(raw)))), "sethostname")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _checked(int(result), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _checked(int(_libc.umount2(target.encode(), ctypes.c_int(flags))), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYSCALLS.get(MACHINE, {}).get("pivot_root")
    if number is None:
        raise OSError(0, f"pivot_root: no system call number for {MACHINE}")
    syscall(number, new_root.encode(), put_old.encode(), what="pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def set_read_only(target: str) -> None:
    """Make ``target`` and every mount below it read-only, nosuid and nodev."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(_AT_FDCWD),
        target.encode(),
        ctypes.c_uint(_AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        what=f"mount_setattr {target}",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_LINUX_CAPABILITY_VERSION_3: Final = 0x2008_0522


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets of this process."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _checked(int(_libc.capset(ctypes.byref(header), data)), "capset")
