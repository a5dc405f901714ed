"""A plugin's content: measured, and copied read-only, in one reading of its files.

The measurement is a sorted tree hash over the plugin's folder (manifest, code, rules; caches
and the signature file left out): every file's relative path and bytes, so that any changed,
added or removed file changes it. The host reads each file once, hashes those bytes and writes
them into a read-only copy, and the worker loads the copy: what runs is exactly what was
measured, with no window to swap a file between measuring and loading.

The host reads the folder as root, so the folder is untrusted input like the plugin's code (a
vendor's tarball can carry anything): a symbolic link is read through only to a regular file
inside the folder itself; a link out of it (to ``/etc/shadow``, to ``/proc/self/environ``, the
host's own environment), a special file (a FIFO, a device, a socket) and more than
``MAX_FILE_BYTES`` a file or ``MAX_TOTAL_BYTES`` in all are refused, each naming the file, and
the plugin does not run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent_host.errors import ContentError

#: What a plugin's content is not: caches its own imports write, and its detached signature.
NOT_CONTENT_DIRS: Final = frozenset({"__pycache__", ".pytest_cache"})
SIGNATURE_NAME: Final = "plugin.sig"
_PREFIX: Final = "sha256:"
#: The most one file, and one plugin's whole content, may hold.
MAX_FILE_BYTES: Final = 64 << 20
MAX_TOTAL_BYTES: Final = 256 << 20
MAX_FILES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Content:
    """A plugin folder as measured: its measurement, and where its read-only copy is."""

    measurement: str
    copy: Path


@dataclass(frozen=True, slots=True)
class Admitted:
    """Content a host may run (``admission.py`` decides): its copy as measured, and who signed
    it ("" where no trusted key did and the signature policy lets it run all the same)."""

    content: Content
    signer: str = ""


def _files(directory: Path) -> list[Path]:
    """Every file of the folder, relative; never through a link to a folder.

    Raises:
        ContentError: a link to a folder, or more files than content may have.
    """
    found = []
    for folder, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs:
            if Path(folder, name).is_symlink():
                raise ContentError(Path(folder, name), "a symbolic link to a folder: refused")
        dirs[:] = sorted(d for d in dirs if d not in NOT_CONTENT_DIRS)
        for name in files:
            path = Path(folder, name)
            relative = path.relative_to(directory)
            if path.suffix == ".pyc" or relative == Path(SIGNATURE_NAME):
                continue
            found.append(relative)
            if len(found) > MAX_FILES:
                raise ContentError(directory, f"more than {MAX_FILES} files: refused")
    return sorted(found)


def _read(directory: Path, relative: Path, budget: int) -> bytes:
    """The bytes of one file of the folder, read as its content may be read.

    Raises:
        ContentError: a link out of the folder, a special file, too many bytes.
        OSError: the file cannot be read (its measurement records that).
    """
    path = directory / relative
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(directory.resolve()):
            raise ContentError(path, f"a symbolic link out of the plugin folder (to {target})")
        path = target
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ContentError(
                directory / relative, "not a regular file (a FIFO, device or socket)"
            )
        limit = min(MAX_FILE_BYTES, budget)
        data = f.read(limit + 1)
    if len(data) > limit:
        whose = "the file" if limit == MAX_FILE_BYTES else "the plugin's content"
        raise ContentError(directory / relative, f"{whose} is over its size cap: refused")
    return data


def _record(digest: hashlib._Hash, relative: Path, data: bytes | None, error: int = 0) -> None:
    digest.update(str(relative).encode() + b"\0")
    digest.update(data if data is not None else f"unreadable: {error}".encode())
    digest.update(b"\0")


def measure(directory: Path) -> str:
    """The measurement of ``directory``, without copying it (for content the host refuses,
    the refusal: no measurement of content can equal it)."""
    digest = hashlib.sha256()
    budget = MAX_TOTAL_BYTES
    try:
        for relative in _files(directory):
            try:
                data = _read(directory, relative, budget)
            except OSError as exc:  # unreadable now: that too is a change
                _record(digest, relative, None, exc.errno or errno.EIO)
                continue
            budget -= len(data)
            _record(digest, relative, data)
    except ContentError as exc:
        return f"refused: {exc}"
    return _PREFIX + digest.hexdigest()


def snapshot(directory: Path, into: Path) -> Content:
    """Measure ``directory`` and copy it, from the same bytes, to a new folder below ``into``
    (files 0444, folders 0555: readable by a worker's own user, writable by nobody).

    Raises:
        ContentError: naming the file the host will not take (nothing is left copied).
    """
    digest = hashlib.sha256()
    staging = into / f".staging-{os.getpid()}-{id(digest)}"
    staging.mkdir(parents=True)
    budget = MAX_TOTAL_BYTES
    try:
        files = _files(directory)
    except ContentError:
        remove_tree(staging)
        raise
    for relative in files:
        try:
            data = _read(directory, relative, budget)
        except OSError as exc:
            _record(digest, relative, None, exc.errno or errno.EIO)
            continue
        except ContentError:
            remove_tree(staging)
            raise
        budget -= len(data)
        _record(digest, relative, data)
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o444)
    measurement = _PREFIX + digest.hexdigest()
    copy = into / measurement.removeprefix(_PREFIX)[:32]
    if copy.exists():  # the same content, copied before: keep the first, drop this one
        remove_tree(staging)
    else:
        for folder, dirs, _ in os.walk(staging, topdown=False):
            for name in dirs:
                Path(folder, name).chmod(0o555)
        staging.chmod(0o555)
        staging.rename(copy)
    return Content(measurement, copy)


def remove_tree(folder: Path) -> None:
    """Remove a folder that may hold read-only copies (whose folders a user other than root
    must make writable first)."""
    for path, dirs, _ in os.walk(folder):
        Path(path).chmod(stat.S_IRWXU)
        for name in dirs:
            Path(path, name).chmod(stat.S_IRWXU)
    shutil.rmtree(folder, ignore_errors=True)
