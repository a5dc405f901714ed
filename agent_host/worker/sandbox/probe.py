"""What the sandbox can apply on this machine: every layer tried on a throw-away child.

The zygote runs the probe once at start and sends the report with its "ready"; `agent-host
plugins` and a host without a zygote run it in a fresh interpreter (``main``). The child is
confined by a policy that grants nothing, non-strict, so that every layer is tried and each one
the kernel refuses is reported with its reason.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
from typing import NoReturn

from agent_host.protocol import SandboxPolicy, SandboxReport
from agent_host.worker.sandbox import confine, pidns

#: The probe's identity: nobody's.
_NOBODY = 65534


def report() -> SandboxReport:
    """Fork a child, confine it, and return what it could apply. Call only in a process that
    holds no gRPC state (the zygote, or a fresh interpreter)."""
    folder = tempfile.mkdtemp(prefix="agent-host-probe-")
    policy = SandboxPolicy(
        uid=_NOBODY, gid=_NOBODY, plugin_dir=folder, socket_dir=folder, tmp_mb=1, strict=False
    )
    out_r, out_w = os.pipe()

    def child(parent: int | None) -> NoReturn:
        code = 1
        try:
            os.close(out_r)
            found = confine.apply(policy, parent)
            os.write(out_w, found.SerializeToString())
            code = 0
        except BaseException as exc:  # a layer that half applied: say so, as a report
            reason = f"{type(exc).__name__}: {exc}"
            failed = SandboxReport()
            failed.layers.add(name="mount_namespace", active=False, reason=reason)
            os.write(out_w, failed.SerializeToString())
        finally:
            os._exit(code)

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        try:
            namespaced: pidns.Namespaced | None = pidns.fork(child)
            pid = namespaced.worker if namespaced else 0
        except OSError:
            namespaced = None
            pid = os.fork()
            if pid == 0:
                child(None)
        os.close(out_w)
        with os.fdopen(out_r, "rb") as raw:
            data = raw.read()
        os.waitpid(pid, 0)
        if namespaced is not None:
            namespaced.end()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return SandboxReport.FromString(data)


def report_text() -> str:
    return base64.b64encode(report().SerializeToString()).decode()


def main() -> None:
    print(report_text())
