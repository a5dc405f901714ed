"""Run by tests/worker/test_sandbox.py in a fresh interpreter (never a fork of pytest, which may
hold gRPC state): confine a child by the policy given, then try what a hostile plugin would and
print what happened, as JSON, one key per attempt."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any, NoReturn

from agent_host.protocol import SandboxPolicy
from agent_host.worker.sandbox import confine, pidns


def attempt(results: dict[str, Any], name: str, action: Any) -> None:
    try:
        value = action()
        results[name] = "ok" if value is None else value
    except OSError as exc:
        results[name] = exc.errno


def read(path: str) -> None:
    with open(path, "rb") as file:
        file.read(1)


def write(path: str) -> None:
    with open(path, "ab"):
        pass


def interfaces() -> list[str]:
    with open("/proc/self/net/dev") as table:
        return sorted(line.split(":")[0].strip() for line in table.readlines()[2:])


def hostile(results: dict[str, Any], host_pid: int, host_file: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def ptrace_host() -> None:
        if libc.ptrace(16, host_pid, 0, 0) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), "ptrace")

    def write_scratch(size: int) -> None:
        with open("/tmp/fill", "wb") as out:
            out.write(b"x" * size)

    attempt(results, "uid", os.getuid)
    attempt(results, "pid", os.getpid)
    attempt(results, "hostname", socket.gethostname)
    attempt(results, "signal_host", lambda: os.kill(host_pid, 0))
    attempt(results, "ptrace_host", ptrace_host)
    attempt(results, "read_shadow", lambda: read("/etc/shadow"))
    attempt(results, "read_host_file", lambda: read(host_file))
    attempt(results, "write_plugin_dir", lambda: write("plugin.py"))
    attempt(results, "write_etc", lambda: write("/etc/agent-host-probe"))
    attempt(results, "scratch_small", lambda: write_scratch(1 << 20))
    attempt(results, "scratch_over_cap", lambda: write_scratch(64 << 20))
    attempt(results, "unix_socket", lambda: socket.socket(socket.AF_UNIX).close())
    attempt(results, "inet_socket", lambda: socket.socket(socket.AF_INET).close())
    attempt(results, "packet_socket", lambda: socket.socket(17, socket.SOCK_RAW).close())
    attempt(results, "exec", lambda: os.execv("/bin/true", ["true"]))
    attempt(results, "interfaces", interfaces)
    attempt(results, "import_stdlib", lambda: __import__("decimal") and None)
    caps = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.startswith("Cap"):
                caps[name] = int(value, 16)
    results["capabilities"] = caps


def main() -> NoReturn:
    policy = SandboxPolicy.FromString(base64.b64decode(sys.argv[1]))
    host_file = sys.argv[2]
    host_pid = os.getpid()
    out_r, out_w = os.pipe()

    def worker(parent: int) -> NoReturn:
        results: dict[str, Any] = {}
        try:
            report = confine.apply(policy, parent)
            results["layers"] = {layer.name: layer.active for layer in report.layers}
            hostile(results, host_pid, host_file)
        except confine.SandboxRefusedError as exc:
            results["refused"] = str(exc)
        os.write(out_w, json.dumps(results).encode())
        os._exit(0)

    namespaced = pidns.fork(worker)
    os.close(out_w)
    _, status = os.waitpid(namespaced.worker, 0)
    namespaced.end()
    with os.fdopen(out_r) as results:
        print(results.read())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
