"""The worker process's entry point: take the secret, confine, connect, then serve.

The host starts a worker fresh (``main`` in a new interpreter, or forked by the zygote, which has
no gRPC state) and writes the spawn's secret to its standard input. The worker confines itself
before it reads anything else, connects to the host's socket, and hands over to the runtime.

The plugin's ``logging`` records travel to the host over the session; its stdout and stderr are
pipes the host reads. Both reach the host's log tagged with the plugin's name and this pid.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from agent_host.protocol import MAX_MESSAGE_BYTES, SECRET_BYTES, WorkerExit
from agent_host.worker import sandbox
from agent_host.worker.runtime import serve


def main(argv: list[str] | None = None) -> int:
    """Run one worker: its arguments are those the spawner gives, the secret comes on stdin."""
    parser = argparse.ArgumentParser(prog="agent_host.worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument(
        "--parent-pid",
        type=int,
        required=True,
        help="the host, or the zygote that forked this worker",
    )
    args = parser.parse_args(argv)

    token = sys.stdin.buffer.read(SECRET_BYTES)
    sys.stdin.close()
    if len(token) != SECRET_BYTES:
        print("worker: no session secret on stdin", file=sys.stderr)
        return WorkerExit.WORKER_EXIT_BOOT_ERROR
    sandbox.confine_self(args.parent_pid)
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
            code = serve(channel, args.worker_id, token)
        except MemoryError:
            code = WorkerExit.WORKER_EXIT_OUT_OF_MEMORY
    # Skip interpreter teardown: plugin threads or C extensions must not keep a worker alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
