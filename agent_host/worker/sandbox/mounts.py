"""The worker's view of the filesystem: built from nothing, as bubblewrap builds one.

In a mount namespace of its own, the worker's root becomes an empty tmpfs into which the host's
folders are bound, read-only, at their own paths: the system (/usr, /etc, the libraries), the
interpreter and its site-packages, the plugin's folder, its session socket's folder and what its
manifest is granted. /proc is its own pid namespace's, /dev holds only null, zero, full, random
and urandom, and /tmp is a private, size-capped tmpfs, the only place it can write. Everything
else (/root, /home, /var, /run, the host's state and findings, other plugins) is not there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from agent_host.worker.sandbox import kernel

#: The system, read-only: what programs and shared libraries need.
SYSTEM_PATHS: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES: Final = ("null", "zero", "full", "random", "urandom")

#: Where the new root is assembled before it becomes "/"; any folder that exists will do.
_STAGE: Final = "/tmp"
_OLD_ROOT: Final = "oldroot"


def _mirror(root: str, path: str, is_dir: bool) -> str:
    """Make ``path`` exist below ``root`` (as a folder, or an empty file); return where."""
    target = root + path
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    return target


def _bind(old: str, path: str, *, writable: bool = False) -> None:
    """Bind the host's ``path`` (seen below ``old``) at ``path`` in the new root."""
    source = old + path
    where = _mirror("", path, os.path.isdir(source))
    kernel.mount(source, where, None, kernel.MS_BIND | kernel.MS_REC)
    if not writable:
        kernel.set_read_only(where)


def _links_on_the_way(path: str) -> list[tuple[str, str]]:
    """The symlinks met while resolving ``path``, as (where, what it points to)."""
    links: list[tuple[str, str]] = []
    current = "/"
    for part in Path(path).parts[1:]:
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            links.append((candidate, os.readlink(candidate)))
            links.extend(_links_on_the_way(os.path.realpath(candidate)))
        current = os.path.realpath(candidate)
    return links


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not below another of them, shortest first (a bind covers what is below it)."""
    chosen: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(_is_below(path, kept) for kept in chosen):
            chosen.append(path)
    return chosen


def _is_below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def build_root(
    read_paths: Iterable[str], *, scratch: str, tmp_bytes: int, uid: int, gid: int
) -> None:
    """Make this process's root the worker's view; call in new mount and pid namespaces.

    ``read_paths`` are bound read-only beside the system, at their own paths (the symlinks on
    the way recreated); those below the scratch folder (normally /tmp) are bound inside it.
    """
    wanted = [p for p in (*SYSTEM_PATHS, *read_paths) if p != "/" and os.path.lexists(p)]
    binds = _outermost(os.path.realpath(p) for p in wanted)
    links = [link for p in wanted for link in _links_on_the_way(p)]
    devices = [f"/dev/{d}" for d in DEVICES if os.path.exists(f"/dev/{d}")]

    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    kernel.mount("tmpfs", _STAGE, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755")
    os.mkdir(f"{_STAGE}/{_OLD_ROOT}")
    os.chdir(_STAGE)
    kernel.pivot_root(".", _OLD_ROOT)
    os.chdir("/")
    old = f"/{_OLD_ROOT}"
    for path in binds:
        if not _is_below(path, scratch):
            _bind(old, path)
    os.mkdir("/dev")
    for device in devices:
        _bind(old, device, writable=True)
    os.mkdir("/proc")
    kernel.mount("proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    os.makedirs(scratch, exist_ok=True)
    kernel.mount(
        "tmpfs",
        scratch,
        "tmpfs",
        kernel.MS_NOSUID | kernel.MS_NODEV,
        f"size={tmp_bytes},mode=0700,uid={uid},gid={gid}",
    )
    for path in binds:
        if _is_below(path, scratch):
            _bind(old, path)
    for where, target in links:
        if not os.path.lexists(where):
            os.makedirs(os.path.dirname(where), exist_ok=True)
            os.symlink(target, where)
    kernel.umount(old, kernel.MNT_DETACH)
    os.rmdir(old)
    # The root itself last: until now its folders were being made.
    kernel.mount(None, "/", None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY)
