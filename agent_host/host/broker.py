"""The file broker: opens, for a worker, the files its manifest is granted to read.

A worker runs as a user of its own, which may not read a file another user keeps to itself:
yet a scanner must read what it scans, whoever owns it. As Chromium's broker does for its
renderers, the host opens such a file itself, read-only, and passes the descriptor over a socket
pair that only that worker holds; the worker never gains the right to open anything.

A request is a path (one SOCK_SEQPACKET packet); the answer is ``b"ok"`` with the descriptor
(SCM_RIGHTS) or ``b"error <errno>"``. The host opens a path only if, with every symlink
resolved, it is a regular file below one of the grants: not a device, FIFO or socket (which
could block the host or act on a device), and the last component not a symlink swapped in after
the check (O_NOFOLLOW, then the opened file's own path checked again).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable
from typing import Final

from agent_host.protocol import BROKER_MAX_PATH_BYTES

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW


class FileBroker:
    """Serves one worker's requests to open granted files, on the host's event loop."""

    def __init__(self, grants: Iterable[str]) -> None:
        self._grants = frozenset(os.path.realpath(grant) for grant in grants)
        self._sock, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self.opened = 0
        self.refused = 0
        self._serving = False

    @property
    def worker_fd(self) -> int:
        """The worker's end, to pass to its process (then ``handed_over``)."""
        return self._theirs.fileno()

    def handed_over(self) -> None:
        """The worker holds its end now: close the host's copy, and serve."""
        self._theirs.close()
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._serve)
        self._serving = True

    def open(self, path: str) -> int:
        """A descriptor of ``path`` if it is a granted regular file; raises OSError."""
        real = os.path.realpath(path)
        if not self.granted(real):
            raise OSError(errno.EACCES, "not granted")
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise OSError(errno.EACCES, "not a regular file")
        fd = os.open(real, _OPEN_FLAGS)
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not self.granted(opened):
                raise OSError(errno.EACCES, "changed while being opened")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def granted(self, real: str) -> bool:
        """Whether ``real`` (an absolute path, resolved) is a grant or lies below one: each of
        its folders looked up in a set, not each grant tried (a Path per grant cost 18 us a
        request with eight grants, most of the broker's time)."""
        folder = real
        while folder not in self._grants:
            if folder == "/":
                return False
            folder = folder[: folder.rfind("/")] or "/"
        return True

    def _serve(self) -> None:
        while True:
            try:
                data = self._sock.recv(BROKER_MAX_PATH_BYTES + 1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone
                self.close()
                return
            self._answer(data)

    def _answer(self, data: bytes) -> None:
        try:
            if len(data) > BROKER_MAX_PATH_BYTES or b"\0" in data:
                raise OSError(errno.ENAMETOOLONG, "bad path")
            fd = self.open(data.decode("utf-8", "surrogateescape"))
        except OSError as exc:
            self.refused += 1
            with contextlib.suppress(OSError):
                self._sock.send(f"error {exc.errno or errno.EACCES}".encode())
            return
        try:
            self.opened += 1
            with contextlib.suppress(OSError):  # a worker that does not read its answers
                socket.send_fds(self._sock, [b"ok"], [fd])
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._serving:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._serving = False
        self._sock.close()
        self._theirs.close()
