"""A plugin's content: measured, and copied read-only, in one reading of its files.

The measurement is a sorted tree hash over the plugin's folder (manifest, code, rules; caches
and the signature file left out): every file's relative path and bytes, so that any changed,
added or removed file changes it. The host reads each file once, hashes those bytes and writes
them into a read-only copy, and the worker loads the copy: what runs is exactly what was
measured, with no window to swap a file between measuring and loading. A symlink in the folder
is read through (its target's bytes are the plugin's content, and are copied as a file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: What a plugin's content is not: caches its own imports write, and its detached signature.
NOT_CONTENT_DIRS: Final = frozenset({"__pycache__", ".pytest_cache"})
SIGNATURE_NAME: Final = "plugin.sig"
_PREFIX: Final = "sha256:"


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
    found = []
    for folder, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in NOT_CONTENT_DIRS)
        for name in files:
            path = Path(folder, name)
            relative = path.relative_to(directory)
            if path.suffix == ".pyc" or relative == Path(SIGNATURE_NAME):
                continue
            found.append(relative)
    return sorted(found)


def _record(digest: hashlib._Hash, relative: Path, data: bytes | None, error: int = 0) -> None:
    digest.update(str(relative).encode() + b"\0")
    digest.update(data if data is not None else f"unreadable: {error}".encode())
    digest.update(b"\0")


def measure(directory: Path) -> str:
    """The measurement of ``directory``, without copying it."""
    digest = hashlib.sha256()
    for relative in _files(directory):
        try:
            _record(digest, relative, (directory / relative).read_bytes())
        except OSError as exc:  # unreadable now: that too is a change
            _record(digest, relative, None, exc.errno or 0)
    return _PREFIX + digest.hexdigest()


def snapshot(directory: Path, into: Path) -> Content:
    """Measure ``directory`` and copy it, from the same bytes, to a new folder below ``into``
    (files 0444, folders 0555: readable by a worker's own user, writable by nobody)."""
    digest = hashlib.sha256()
    staging = into / f".staging-{os.getpid()}-{id(digest)}"
    staging.mkdir(parents=True)
    for relative in _files(directory):
        try:
            data = (directory / relative).read_bytes()
        except OSError as exc:
            _record(digest, relative, None, exc.errno or 0)
            continue
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
