"""The zygote: a pre-initialised process that forks workers, so a restart skips Python's start-up.

Starting a worker from scratch costs a Python start and, above all, importing grpc and the
protocol (about 130 ms here); the zygote pays that once and forks each worker from itself, as
Android's zygote and Chromium's do. It imports gRPC but never creates a gRPC object (no channel,
no server, no call), which gRPC supports: what is not fork-safe is gRPC state, and the zygote has
none. Each child creates its own channel after the fork.

Protocol, over a SOCK_SEQPACKET socket pair with the host (one message per packet, JSON):

    host   -> zygote  {"op": "spawn", "id": N, "argv": [...], "cwd": "...", "sandbox": bool}
                      + 4 fds (SCM_RIGHTS): the child's stdin, stdout and stderr, and its end
                      of the host's file broker (its number is appended as --broker-fd)
    zygote -> host    {"op": "ready", "sandbox": "..."}        once, after the imports and a
                                                               probe of the sandbox (base64
                                                               SandboxReport)
                      {"op": "spawned", "id": N, "pid": P}
                      {"op": "failed", "id": N, "error": "..."}
                      {"op": "exited", "pid": P, "returncode": R}   (negative: killed by signal)

A sandboxed worker is forked into a pid namespace of its own (see ``sandbox.pidns``); when it
has exited, the zygote kills that namespace, and with it whatever the worker left running. The
zygote is single-threaded, a child subreaper (what its workers orphan stays its own, to reap),
dies with the host (PDEATHSIG), and its children die with it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import sys
from typing import Any, NoReturn

from agent_host.protocol import ZYGOTE_MAX_MESSAGE_BYTES
from agent_host.worker.sandbox import kernel, pidns, probe, seccomp


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _child(
    sock: socket.socket,
    wakeup: tuple[int, int],
    fds: list[int],
    request: dict[str, Any],
    parent: int | None,
) -> NoReturn:
    """Become the worker: own session, the given pipes as 0/1/2, then the worker's main."""
    code = 1
    try:
        kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        sock.close()
        for fd in wakeup:
            os.close(fd)
        for target, fd in zip((0, 1, 2), fds[:3], strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        from agent_host.worker import boot

        code = boot.main([*request["argv"], "--broker-fd", str(fds[3])], parent=parent)
    except SystemExit as exc:  # as the interpreter would exit for it
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # anything: the child must never return into the zygote's loop
        print(f"zygote child: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        os._exit(code)


class _Children:
    """The zygote's children: workers, the inits of their pid namespaces, and orphans."""

    def __init__(self) -> None:
        self.namespaces: dict[int, pidns.Namespaced] = {}
        self.inits: set[int] = set()

    def reap(self, sock: socket.socket) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.inits:
                self.inits.discard(pid)
                continue
            code = os.waitstatus_to_exitcode(status)
            _send(sock, {"op": "exited", "pid": pid, "returncode": code})
            # After the host knows: its restart need not wait for the namespace to go.
            namespaced = self.namespaces.pop(pid, None)
            if namespaced is not None:
                namespaced.end()
                self.inits.discard(namespaced.init)


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except BlockingIOError:
            return


def _fork(
    sock: socket.socket,
    wakeup: tuple[int, int],
    request: dict[str, Any],
    fds: list[int],
    children: _Children,
) -> int:
    def worker(parent: int | None) -> NoReturn:
        _child(sock, wakeup, fds, request, parent)

    if request.get("sandbox"):
        try:
            namespaced = pidns.fork(worker)
        except OSError:
            pass  # forked plainly below: the worker's sandbox says which layer is missing
        else:
            children.namespaces[namespaced.worker] = namespaced
            children.inits.add(namespaced.init)
            return namespaced.worker
    pid = os.fork()
    if pid == 0:
        worker(None)
    return pid


def _spawn(
    sock: socket.socket,
    wakeup: tuple[int, int],
    request: dict[str, Any],
    fds: list[int],
    children: _Children,
) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = _fork(sock, wakeup, request, fds, children)
    except OSError as exc:
        pid = -1
        _send(sock, {"op": "failed", "id": request["id"], "error": str(exc)})
    for fd in fds:
        os.close(fd)
    if pid > 0:
        _send(sock, {"op": "spawned", "id": request["id"], "pid": pid})


def serve(sock: socket.socket) -> None:
    """Fork workers on request until the host hangs up."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    children = _Children()
    if seccomp.supported() is None:
        for network, execute in itertools.product((False, True), repeat=2):
            seccomp.compiled(network=network, execute=execute)
    _send(sock, {"op": "ready", "sandbox": probe.report_text()})
    watched: list[Any] = [sock, wake_r]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            _drain(wake_r)
            children.reap(sock)
        if sock not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, ZYGOTE_MAX_MESSAGE_BYTES, 4)
        if not data:
            return  # the host is gone; PDEATHSIG takes our children with us
        request = json.loads(data)
        if request.get("op") != "spawn" or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "failed", "id": request.get("id"), "error": "bad request"})
            continue
        _spawn(sock, (wake_r, wake_w), request, fds, children)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    host_pid = int(args[1])
    # The expensive imports, once: grpc, the protocol and the runtime.
    from agent_host.worker import boot, sandbox

    del boot
    sandbox.die_with_parent(host_pid)
    with contextlib.suppress(OSError):
        kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    serve(sock)
    os._exit(0)
