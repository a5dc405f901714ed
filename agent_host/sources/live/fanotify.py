"""fanotify with file handles: every change on a whole filesystem, with the pid that made it.

The file sensor's kernel interface as root. One filesystem mark (``FAN_MARK_FILESYSTEM``) per
filesystem that holds a watched folder reports every entry created, deleted or renamed, every
file modified and every attribute changed on it, with the pid of the process that did it; the
sensor keeps what falls under the watched folders. Unlike inotify there is no watch per folder
(nothing to run out of, no race with a folder just created) and no open or read is reported,
so a busy folder of readers costs nothing.

Events name the folder by a file handle plus the entry's name (``FAN_REPORT_DFID_NAME``); the
handle is turned back into a path with ``open_by_handle_at`` and the answer cached. A queue
overflow (the kernel's queue is bounded at 16,384 events) is counted and logged, never silent.
Rename arrives as one event with both names (``FAN_RENAME``, Linux 5.17).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.fanotify_mark.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.statfs.restype = ctypes.c_int

# <linux/fanotify.h>
FAN_MODIFY: Final = 0x2
FAN_ATTRIB: Final = 0x4
FAN_CREATE: Final = 0x100
FAN_DELETE: Final = 0x200
FAN_Q_OVERFLOW: Final = 0x4000
FAN_RENAME: Final = 0x10000000
FAN_ONDIR: Final = 0x40000000
_FAN_CLOEXEC: Final = 0x1
_FAN_NONBLOCK: Final = 0x2
_FAN_REPORT_DFID_NAME: Final = 0x400 | 0x800
_FAN_MARK_ADD: Final = 0x1
_FAN_MARK_FILESYSTEM: Final = 0x100
_INFO_DFID_NAME: Final = 2
_INFO_OLD_DFID_NAME: Final = 10
_INFO_NEW_DFID_NAME: Final = 12
_O_PATH: Final = 0o10000000

#: What the sensor asks for: changes only, on files and on folders.
CHANGES: Final = FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_MODIFY | FAN_ATTRIB | FAN_ONDIR

# event_len, vers, reserved, metadata_len, mask, fd, pid
_METADATA: Final = struct.Struct("=IBBHQii")
_INFO_HEADER: Final = struct.Struct("=BBH")  # info_type, pad, len
_HANDLE_HEADER: Final = struct.Struct("=Ii")  # handle_bytes, handle_type
_FSID_OFFSET: Final = 56  # of f_fsid in struct statfs on 64-bit Linux: seven longs before it
_READ_SIZE: Final = 256 * 1024
_CACHE_SIZE: Final = 8192


def _error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def fsid(path: str) -> bytes:
    """The filesystem id of ``path`` as fanotify reports it (statfs's f_fsid)."""
    buffer = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buffer) != 0:
        raise _error(f"statfs {path}")
    return buffer.raw[_FSID_OFFSET : _FSID_OFFSET + 8]


@dataclass(frozen=True, slots=True)
class Change:
    """One change as the kernel reported it: what (mask bits), where, and by whom."""

    mask: int
    pid: int
    path: str
    #: FAN_RENAME only: the new path (``path`` is the old one).
    dest_path: str = ""

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & FAN_ONDIR)


class Fanotify:
    """A notification group with filesystem marks; ``changes()`` reads what it reports."""

    def __init__(self) -> None:
        fd = _libc.fanotify_init(
            _FAN_CLOEXEC | _FAN_NONBLOCK | _FAN_REPORT_DFID_NAME, os.O_RDONLY | os.O_LARGEFILE
        )
        if fd < 0:
            raise _error("fanotify_init")
        self.fd = fd
        self.overflows = 0
        self.unresolved = 0
        self._mounts: dict[bytes, int] = {}  # fsid -> an fd on that filesystem
        self._folders: dict[bytes, str] = {}  # file handle -> folder path, bounded

    def mark_filesystem(self, path: str) -> bool:
        """Watch the filesystem that holds ``path``; False if it was watched already."""
        key = fsid(path)
        if key in self._mounts:
            return False
        if _libc.fanotify_mark(
            self.fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, CHANGES, -1, os.fsencode(path)
        ):
            raise _error(f"fanotify_mark {path}")
        self._mounts[key] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return True

    def close(self) -> None:
        for fd in self._mounts.values():
            os.close(fd)
        self._mounts.clear()
        os.close(self.fd)

    def wait(self, timeout_s: float) -> bool:
        """True once there is something to read."""
        readable, _, _ = select.select([self.fd], [], [], timeout_s)
        return bool(readable)

    def changes(self) -> Iterator[Change]:
        """Every change queued now, in the kernel's order; stops when the queue is empty."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                return
            yield from self._parse(data)

    def _parse(self, data: bytes) -> Iterator[Change]:
        offset = 0
        while offset + _METADATA.size <= len(data):
            length, _vers, _, meta_len, mask, fd, pid = _METADATA.unpack_from(data, offset)
            if length < meta_len or offset + length > len(data):
                return  # cannot happen with a whole read; never read past a record
            if fd >= 0:  # FAN_NOFD (-1) in FID mode
                os.close(fd)  # not asked for (FID mode has none), but never leak one
            if mask & FAN_Q_OVERFLOW:
                self.overflows += 1
            else:
                change = self._change(data, offset + meta_len, offset + length, mask, pid)
                if change is not None:
                    yield change
            offset += length

    def _change(self, data: bytes, start: int, end: int, mask: int, pid: int) -> Change | None:
        paths: dict[int, str | None] = {}
        while start + _INFO_HEADER.size <= end:
            info_type, _, info_len = _INFO_HEADER.unpack_from(data, start)
            if info_len == 0:
                break
            if info_type in (_INFO_DFID_NAME, _INFO_OLD_DFID_NAME, _INFO_NEW_DFID_NAME):
                paths[info_type] = self._path(data[start + _INFO_HEADER.size : start + info_len])
            start += info_len
        if mask & FAN_RENAME:
            old, new = paths.get(_INFO_OLD_DFID_NAME), paths.get(_INFO_NEW_DFID_NAME)
            if old is None or new is None:
                self.unresolved += 1
                return None
            if mask & FAN_ONDIR:
                self._folders.clear()  # every folder below it now has another path
            return Change(mask, pid, old, new)
        path = paths.get(_INFO_DFID_NAME)
        if path is None:
            self.unresolved += 1
            return None
        if mask & FAN_DELETE and mask & FAN_ONDIR:
            self._folders.clear()
        return Change(mask, pid, path)

    def _path(self, record: bytes) -> str | None:
        """The path a DFID_NAME record names: its folder's handle resolved, then the name."""
        key, handle = record[:8], record[8:]
        handle_bytes, _ = _HANDLE_HEADER.unpack_from(handle)
        end = _HANDLE_HEADER.size + handle_bytes
        name = handle[end:].split(b"\0", 1)[0]
        folder = self._folder(key, handle[:end])
        if folder is None:
            return None
        if not name or name == b".":
            return folder
        return os.path.join(folder, os.fsdecode(name))

    def _folder(self, key: bytes, handle: bytes) -> str | None:
        cached = self._folders.get(handle)
        if cached is not None:
            return cached
        mount = self._mounts.get(key)
        if mount is None:
            return None
        fd = _libc.open_by_handle_at(mount, handle, _O_PATH | os.O_CLOEXEC)
        if fd < 0:
            if ctypes.get_errno() not in (errno.ESTALE, errno.ENOENT):
                raise _error("open_by_handle_at")
            return None  # the folder is gone already
        try:
            folder = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if folder.endswith(" (deleted)"):
            return None
        if len(self._folders) >= _CACHE_SIZE:
            self._folders.clear()
        self._folders[handle] = folder
        return folder
