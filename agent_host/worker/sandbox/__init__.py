"""The worker's sandbox: what a worker may do, applied to itself before any plugin code runs.

One module per layer (``pidns``, ``mounts``, ``identity``, ``landlock``, ``seccomp``), the system
calls they need in ``kernel``, the order they go in in ``confine``, and what this machine allows
in ``probe``. The policy comes from the host (``SandboxPolicy`` in protos/), which never imports
this package.
"""

from __future__ import annotations

import os
import signal

from agent_host.worker.sandbox import kernel


def die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has. ``parent_pid``
    None: the parent is outside this process's pid namespace, and checked by its pidfd."""
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        # The parent died before PDEATHSIG was armed: nobody is left to serve.
        os._exit(1)
