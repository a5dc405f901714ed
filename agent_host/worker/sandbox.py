"""What a worker process may do: applied by the worker to itself before any plugin code runs.

The worker is started by exec (never forked from the host), so these calls act on a fresh process
that holds nothing of the host's but its session secret.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
from typing import Final

# From <linux/prctl.h>.
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
_PR_SET_NO_NEW_PRIVS: Final = 38


def _prctl(option: int, arg: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0)) == 0


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        # The parent died before PDEATHSIG was armed: nobody is left to serve.
        os._exit(1)


def confine_self(parent_pid: int) -> None:
    """Confine the calling worker process.

    - dies with its parent (PDEATHSIG: the host, or the zygote, which dies with the host), so a
      crashed host leaves no orphaned plugins behind;
    - no core dumps (they would hold event data) and not dumpable, so that another plugin's worker
      running as the same user cannot read this one's memory or environment through /proc or
      ptrace, and with it the session secret;
    - no new privileges: a setuid binary the plugin executes does not gain any.
    """
    die_with_parent(parent_pid)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
