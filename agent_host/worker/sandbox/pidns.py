"""A pid namespace per worker: it sees and signals only its own processes.

The forking process (the zygote, or an exec'd worker that forks itself) unshares a new pid
namespace and forks twice into it: first a minimal init (pid 1), then the worker (pid 2). The
worker stays the forker's own child, so its real pid and exit status reach the host as before.
When the worker has gone, killing its init makes the kernel kill everything else in the
namespace: a daemon the plugin left behind with ``setsid`` and a double fork dies with it.

The init holds nothing: every descriptor closed, no capabilities, not dumpable. Inside the
namespace no signal it does not handle reaches it, so the worker cannot kill it early.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from typing import NoReturn

from agent_host.worker.sandbox import identity, kernel

#: The init's identity: nobody's, owning nothing.
_NOBODY = 65534


def parent_alive(parent: int) -> bool:
    """Whether the process of the pidfd ``parent`` is still running (it becomes readable when
    the process exits). The check that PDEATHSIG, armed just before, came in time: ``getppid``
    cannot tell, since the parent is outside the namespace and shows as 0 either way."""
    readable, _, _ = select.select([parent], [], [], 0)
    return not readable


def parent_alive_after(parent: int) -> bool:
    """Block until the process of the pidfd ``parent`` exits (False), or a signal interrupts
    the wait (True: wait again)."""
    try:
        readable, _, _ = select.select([parent], [], [])
    except InterruptedError:
        return True
    return not readable


def _init(parent: int) -> NoReturn:
    try:
        kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
        if not parent_alive(parent):
            os._exit(0)
        os.closerange(0, parent)  # all but the parent's pidfd, which it waits on below
        os.closerange(parent + 1, 1 << 16)
        signal.set_wakeup_fd(-1)
        for signum in range(1, signal.NSIG):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # orphans reparented here reap themselves
        identity.become(_NOBODY, _NOBODY)
        kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
        kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
        # The credential change cleared PDEATHSIG until it was armed again: a parent that died
        # in between sent nothing (an init left in pause() for good, once in 52 host kills).
        # So the init waits on the parent's pidfd itself, which is readable once it has gone.
        while parent_alive_after(parent):
            pass
    finally:
        os._exit(0)


class Namespaced:
    """A worker forked into a pid namespace of its own, beside that namespace's init."""

    def __init__(self, worker: int, init: int) -> None:
        self.worker = worker
        self.init = init

    def end(self) -> None:
        """Kill the namespace (its init): whatever the worker left in it dies too."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.init, 0)


def fork(worker_main: Callable[[int], NoReturn]) -> Namespaced:
    """Fork ``worker_main(parent_pidfd)`` as pid 2 of a new pid namespace; raises OSError where
    the kernel refuses one. This process's own namespace is unchanged."""
    parent = os.pidfd_open(os.getpid())
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.unshare(kernel.CLONE_NEWPID)
        try:
            init = os.fork()
            if init == 0:
                _init(parent)
            try:
                worker = os.fork()
            except OSError:
                os.kill(init, signal.SIGKILL)
                os.waitpid(init, 0)
                raise
            if worker == 0:
                os.close(own)
                worker_main(parent)
        finally:
            # Later forks (the next worker's init) must start a namespace of their own.
            kernel.setns(own, kernel.CLONE_NEWPID)
    finally:
        os.close(own)
        os.close(parent)
    return Namespaced(worker, init)
