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


def confine_self(host_pid: int) -> None:
    """Confine the calling worker process.

    - dies with the host (PDEATHSIG), so a crashed host leaves no orphaned plugins behind;
    - no core dumps (they would hold event data) and not dumpable, so that another plugin's worker
      running as the same user cannot read this one's memory or environment through /proc or
      ptrace, and with it the session secret;
    - no new privileges: a setuid binary the plugin executes does not gain any.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host_pid:
        # The host died before PDEATHSIG was armed: nobody is left to serve.
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
