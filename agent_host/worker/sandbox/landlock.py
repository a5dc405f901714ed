"""Landlock: what the worker may read, write and execute, enforced by the kernel per path.

A second fence behind the mount namespace: even what the worker's view holds (all of /etc, say)
it reads only where it needs to. Every access right the running kernel knows is handled, so that
a right it does not grant is denied; TCP binds and connects are denied unless the manifest is
granted the network, and signals and abstract Unix sockets stay within the worker's own domain.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from typing import Final

from agent_host.worker.sandbox import kernel

_CREATE_RULESET_VERSION: Final = 1 << 0
_RULE_PATH_BENEATH: Final = 1

# Filesystem rights, from <linux/landlock.h>, and the ABI that introduced them.
EXECUTE: Final = 1 << 0
WRITE_FILE: Final = 1 << 1
READ_FILE: Final = 1 << 2
READ_DIR: Final = 1 << 3
_DIR_ONLY: Final = sum(1 << bit for bit in range(3, 14))  # READ_DIR ... REFER
_ALL_BY_ABI: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
TRUNCATE: Final = 1 << 14
_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1

READ: Final = READ_FILE | READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def abi_version() -> int:
    """The Landlock ABI of the running kernel; raises OSError where it has none."""
    return kernel.syscall(
        kernel.SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
        what="landlock_create_ruleset",
    )


def _all_fs_rights(abi: int) -> int:
    return _ALL_BY_ABI[max(level for level in _ALL_BY_ABI if level <= abi)]


def restrict(read: Iterable[str], write: Iterable[str], *, execute: bool, network: bool) -> int:
    """Confine this process (and what it starts) to these paths; returns the ABI used.

    ``read`` paths may be read (and executed from, if ``execute``), ``write`` paths are fully
    the worker's; a path that does not exist is skipped.
    """
    abi = abi_version()
    handled = _all_fs_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4 and not network:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    ruleset = kernel.syscall(
        kernel.SYS_LANDLOCK_CREATE_RULESET,
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
        what="landlock_create_ruleset",
    )
    try:
        reading = READ | (EXECUTE if execute else 0)
        for path in read:
            _allow(ruleset, path, reading & handled)
        for path in write:
            _allow(ruleset, path, handled if execute else handled & ~EXECUTE)
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
        kernel.syscall(
            kernel.SYS_LANDLOCK_RESTRICT_SELF,
            ctypes.c_int(ruleset),
            ctypes.c_uint32(0),
            what="landlock_restrict_self",
        )
    finally:
        os.close(ruleset)
    return abi


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= ~_DIR_ONLY
        rule = _PathBeneathAttr(rights, fd)
        kernel.syscall(
            kernel.SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
            what=f"landlock_add_rule {path}",
        )
    finally:
        os.close(fd)
