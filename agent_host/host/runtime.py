"""The host's own process: not dumpable, and its runtime folder (sessions, content copies).

The runtime folder is named by the host's pid, so that a later host can tell that one was left
by a host that is gone (killed with SIGKILL, say) and remove it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from pathlib import Path
from typing import Final

import structlog

from agent_host.host.updates.content import remove_tree

log = structlog.get_logger("agent_host")

_PR_SET_DUMPABLE: Final = 4


def not_dumpable() -> None:
    """Make this process not dumpable: no core file, and /proc/PID/mem, environ and ptrace are
    closed to processes of the same user (a worker holds no secret of the host's, but the host
    holds every worker's session secret until it is used)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("host could not make itself non-dumpable", errno=ctypes.get_errno())


def remove_stale_runtime_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the socket folders of hosts that are gone (killed with SIGKILL, say)."""
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob("agent-host-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and folder.is_dir():
            remove_tree(folder)
            removed.append(folder)
    if removed:
        log.info("removed socket folders of hosts that are gone", folders=len(removed))
    return removed


def make_runtime_dir() -> Path:
    """A fresh runtime folder for this host, after removing those of hosts that are gone."""
    remove_stale_runtime_dirs()
    folder = Path(tempfile.mkdtemp(prefix=f"agent-host-{os.getpid()}-"))
    # Not listable, but a worker may pass through to its own session folder (0700, its uid's)
    # when it is granted to read the host's /tmp, which then holds this folder.
    folder.chmod(0o711)
    return folder
