"""The zygote: a pre-initialised process that forks workers, so a restart skips Python's start-up.

Starting a worker from scratch costs a Python start and, above all, importing grpc and the
protocol (about 130 ms here); the zygote pays that once and forks each worker from itself, as
Android's zygote and Chromium's do. It imports gRPC but never creates a gRPC object (no channel,
no server, no call), which gRPC supports: what is not fork-safe is gRPC state, and the zygote has
none. Each child creates its own channel after the fork.

Protocol, over a SOCK_SEQPACKET socket pair with the host (one message per packet, JSON):

    host   -> zygote  {"op": "spawn", "id": N, "argv": [...], "cwd": "..."} + 3 fds (SCM_RIGHTS):
                      the child's stdin, stdout and stderr
    zygote -> host    {"op": "ready"}                          once, after the imports
                      {"op": "spawned", "id": N, "pid": P}
                      {"op": "failed", "id": N, "error": "..."}
                      {"op": "exited", "pid": P, "returncode": R}   (negative: killed by signal)

The zygote is single-threaded, dies with the host (PDEATHSIG), and its children die with it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from typing import Any, NoReturn

from agent_host.protocol import ZYGOTE_MAX_MESSAGE_BYTES


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _child(
    sock: socket.socket, wakeup: tuple[int, int], fds: list[int], request: dict[str, Any]
) -> NoReturn:
    """Become the worker: own session, the given pipes as 0/1/2, then the worker's main."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        sock.close()
        for fd in wakeup:
            os.close(fd)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        from agent_host.worker import boot

        code = boot.main(request["argv"])
    except SystemExit as exc:  # as the interpreter would exit for it
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # anything: the child must never return into the zygote's loop
        print(f"zygote child: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        os._exit(code)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"op": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except BlockingIOError:
            return


def _spawn(
    sock: socket.socket, wakeup: tuple[int, int], request: dict[str, Any], fds: list[int]
) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        pid = -1
        _send(sock, {"op": "failed", "id": request["id"], "error": str(exc)})
    if pid == 0:
        _child(sock, wakeup, fds, request)
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
    _send(sock, {"op": "ready"})
    watched: list[Any] = [sock, wake_r]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            _drain(wake_r)
            _reap(sock)
        if sock not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, ZYGOTE_MAX_MESSAGE_BYTES, 3)
        if not data:
            return  # the host is gone; PDEATHSIG takes our children with us
        request = json.loads(data)
        if request.get("op") != "spawn" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "failed", "id": request.get("id"), "error": "bad request"})
            continue
        _spawn(sock, (wake_r, wake_w), request, fds)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    host_pid = int(args[1])
    # The expensive imports, once: grpc, the protocol and the runtime.
    from agent_host.worker import boot, sandbox

    del boot
    sandbox.die_with_parent(host_pid)
    serve(sock)
    os._exit(0)
