"""The worker process's entry point: take the secret, confine, connect, then serve.

The host starts a worker fresh (``main`` in a new interpreter, or forked by the zygote, which has
no gRPC state) and writes the spawn's secret to its standard input. The worker confines itself
by the host's sandbox policy before it reads anything else, connects to its session socket, and
hands over to the runtime.

An exec'd worker is not yet in a pid namespace of its own: once it has its secret (and with it
the host's cgroup and limits) it forks itself into one, and stays as the waiter that passes the
worker's exit status on. The zygote forks its workers into one directly.

The plugin's ``logging`` records travel to the host over the session; its stdout and stderr are
pipes the host reads. Both reach the host's log tagged with the plugin's name and this pid.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
from typing import NoReturn

import grpc

from agent_host import sdk
from agent_host.protocol import MAX_MESSAGE_BYTES, SECRET_BYTES, SandboxPolicy, WorkerExit
from agent_host.worker import sandbox
from agent_host.worker.runtime import serve
from agent_host.worker.sandbox import confine, pidns


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agent_host.worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument(
        "--parent-pid",
        type=int,
        required=True,
        help="the host, or the zygote that forked this worker",
    )
    parser.add_argument("--broker-fd", type=int, help="the worker's end of the host's file broker")
    parser.add_argument(
        "--sandbox",
        type=lambda text: SandboxPolicy.FromString(base64.b64decode(text)),
        required=True,
        help="the host's SandboxPolicy, serialized and base64-encoded",
    )
    return parser.parse_args(argv)


def _confine(policy: SandboxPolicy, parent: int | None) -> bool:
    """Apply the sandbox; False (said on stderr) if a strict policy cannot be."""
    try:
        report = confine.apply(policy, parent)
    except confine.SandboxRefusedError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return False
    for layer in report.layers:
        if not layer.active and layer.reason:
            print(f"worker: sandbox layer not applied: {layer.name}: {layer.reason}")
    return True


def _connect_and_serve(args: argparse.Namespace, token: bytes) -> int:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    with grpc.insecure_channel(f"unix:{args.socket}", options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            print(f"worker: cannot connect to {args.socket}", file=sys.stderr)
            return WorkerExit.WORKER_EXIT_BOOT_ERROR
        try:
            return serve(channel, args.worker_id, token)
        except MemoryError:
            return WorkerExit.WORKER_EXIT_OUT_OF_MEMORY


def _read_secret() -> bytes | None:
    token = sys.stdin.buffer.read(SECRET_BYTES)
    sys.stdin.close()
    if len(token) != SECRET_BYTES:
        print("worker: no session secret on stdin", file=sys.stderr)
        return None
    return token


def _exit(code: int) -> NoReturn:
    # Skip interpreter teardown: plugin threads or C extensions must not keep a worker alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _wait_for(namespaced: pidns.Namespaced) -> NoReturn:
    """Be the exec'd worker's waiter: pass its exit on, as a code or as the same signal."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # the host signals the group: the worker stops
    _, status = os.waitpid(namespaced.worker, 0)
    namespaced.end()
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    _exit(code)


def main(argv: list[str] | None = None, parent: int | None = None) -> int:
    """Run one worker: its arguments are those the spawner gives, the secret comes on stdin.
    ``parent`` is a pidfd of the zygote when it forked this worker into a pid namespace."""
    args = _arguments(argv)
    sandbox.die_with_parent(args.parent_pid if parent is None else None)
    if args.broker_fd is not None:
        sdk.attach_broker(args.broker_fd)
    if parent is not None:
        # Forked into its namespace by the zygote: confine while the host sets this process's
        # limits and cgroup, then wait for the secret, which comes once they are set.
        if not _confine(args.sandbox, parent):
            return WorkerExit.WORKER_EXIT_BOOT_ERROR
        token = _read_secret()
        if token is None:
            return WorkerExit.WORKER_EXIT_BOOT_ERROR
        _exit(_connect_and_serve(args, token))
    # Exec'd: the secret first, so that the worker forked below is in the cgroup the host has
    # put this process in by then. Where the kernel gives no pid namespace, go on without:
    # confine says so (and refuses, if strict).
    token = _read_secret()
    if token is None:
        return WorkerExit.WORKER_EXIT_BOOT_ERROR

    def worker(pidfd: int | None) -> NoReturn:
        if not _confine(args.sandbox, pidfd):
            _exit(WorkerExit.WORKER_EXIT_BOOT_ERROR)
        _exit(_connect_and_serve(args, token))

    with contextlib.suppress(OSError):
        _wait_for(pidns.fork(worker))
    return worker(None)


if __name__ == "__main__":
    sys.exit(main())
