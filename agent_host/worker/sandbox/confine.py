"""Confine a worker, layer by layer, before any plugin code runs.

Called in the worker as root, in a pid namespace of its own (see ``pidns``), with the policy the
host ordered. The order matters: namespaces and the new root while root may still make them,
then the identity (which takes root away), then the layers an unprivileged process sets on itself
(Landlock, seccomp), the filter last since it forbids the calls that came before it.

A layer the kernel refuses is recorded with its reason; under a strict policy the first one ends
the spawn (``SandboxRefusedError``), otherwise the others still apply and the report says what is
missing. Never silently weaker: the report goes to the host, which logs it once per layer.
"""

from __future__ import annotations

import functools
import operator
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from agent_host.protocol import SandboxLayer, SandboxPolicy, SandboxReport
from agent_host.worker.sandbox import identity, kernel, landlock, mounts, pidns, seccomp

MIB: Final = 1 << 20
HOSTNAME: Final = "agent-host-worker"
#: Where the scratch folder goes when the manifest is granted to read the host's /tmp.
SCRATCH_BESIDE_TMP: Final = "/run/scratch"
_AGENT_HOST: Final = str(Path(__file__).resolve().parents[2])


class SandboxRefusedError(Exception):
    """A layer of a strict policy could not be applied; the worker must not run."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"sandbox: {layer}: {reason}")
        self.layer = layer


class _Report:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.layers: list[SandboxLayer] = []

    def applied(self, name: str) -> None:
        self.layers.append(SandboxLayer(name=name, active=True))

    def missing(self, name: str, reason: str) -> None:
        if self.strict:
            raise SandboxRefusedError(name, reason)
        self.layers.append(SandboxLayer(name=name, active=False, reason=reason))

    def skipped(self, name: str, reason: str) -> None:
        """Not applied because the policy grants what it would take away."""
        self.layers.append(SandboxLayer(name=name, active=False, reason=reason))


def interpreter_paths() -> list[str]:
    """What the interpreter reads as it goes on importing: its prefixes, its import path and
    agent_host itself, whether installed or run from a checkout."""
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    paths.add(_AGENT_HOST)
    return sorted(paths)


def _system_reads() -> Iterator[str]:
    yield from ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin")
    yield from ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group")
    yield "/proc/self"
    yield from (f"/dev/{device}" for device in mounts.DEVICES)


def _network_reads() -> Iterator[str]:
    yield from ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf")
    yield from ("/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates")


def _scratch(policy: SandboxPolicy) -> str:
    return SCRATCH_BESIDE_TMP if "/tmp" in policy.read_paths else "/tmp"


def _namespaces(policy: SandboxPolicy, report: _Report) -> bool:
    """Unshare the namespaces the policy asks for; True if a mount namespace was made."""
    wanted = [
        ("mount_namespace", kernel.CLONE_NEWNS),
        ("ipc_namespace", kernel.CLONE_NEWIPC),
        ("uts_namespace", kernel.CLONE_NEWUTS),
    ]
    if policy.network:
        report.skipped("network_namespace", "the manifest is granted the network")
    else:
        wanted.append(("network_namespace", kernel.CLONE_NEWNET))
    try:  # all at once, the common case; one by one to say which the kernel refuses
        kernel.unshare(functools.reduce(operator.or_, (flag for _, flag in wanted)))
        made = [name for name, _ in wanted]
    except OSError:
        made = []
        for name, flag in wanted:
            try:
                kernel.unshare(flag)
            except OSError as exc:
                report.missing(name, str(exc))
            else:
                made.append(name)
    for name in made:
        report.applied(name)
    if "uts_namespace" in made:
        kernel.sethostname(HOSTNAME)
    return "mount_namespace" in made


def _view(policy: SandboxPolicy) -> None:
    binds = [*interpreter_paths(), policy.plugin_dir, policy.socket_dir, *policy.read_paths]
    try:
        mounts.build_root(
            binds,
            scratch=_scratch(policy),
            tmp_bytes=max(policy.tmp_mb, 1) * MIB,
            uid=policy.uid,
            gid=policy.gid,
        )
    except OSError as exc:
        # Half a view is no view: the worker cannot run in it (strict or not).
        raise SandboxRefusedError("mount_namespace", str(exc)) from exc


def _identity(policy: SandboxPolicy, report: _Report) -> None:
    if os.geteuid() != 0:
        report.missing("identity", "the host is not root: the worker runs as the host's user")
        report.missing("capabilities", "the host is not root")
        return
    try:
        identity.become(policy.uid, policy.gid)
    except OSError as exc:
        raise SandboxRefusedError("identity", str(exc)) from exc
    report.applied("identity")
    leftover = {name: value for name, value in identity.capability_sets().items() if value}
    if leftover:
        raise SandboxRefusedError("capabilities", f"still held: {leftover}")
    report.applied("capabilities")


def _landlock(policy: SandboxPolicy, scratch: str, report: _Report) -> None:
    read = [*interpreter_paths(), *_system_reads(), policy.plugin_dir, *policy.read_paths]
    if policy.network:
        read += _network_reads()
    write = [scratch, "/dev/null", "/dev/zero", "/dev/full"]
    try:
        landlock.restrict(read, write, execute=policy.exec, network=policy.network)
    except OSError as exc:
        report.missing("landlock", str(exc))
        return
    report.applied("landlock")


def _rlimits(policy: SandboxPolicy, report: _Report) -> None:
    """The kernel's backstops on this process, set while it still may (the host sets them too,
    from outside, where it can: whichever comes second finds them set)."""
    wanted = [
        (resource.RLIMIT_DATA, policy.rlimit_data),
        (resource.RLIMIT_NOFILE, policy.rlimit_nofile),
        (resource.RLIMIT_NPROC, policy.rlimit_nproc),
        (resource.RLIMIT_CORE, 0),
    ]
    try:
        for which, value in wanted:
            if value or which == resource.RLIMIT_CORE:
                resource.setrlimit(which, (value, value))
    except (OSError, ValueError) as exc:
        report.missing("rlimits", f"could not be set: {exc}")
        return
    report.applied("rlimits")


def apply(policy: SandboxPolicy, parent: int | None) -> SandboxReport:
    """Confine this process by ``policy``; ``parent`` is a pidfd of the process that forked it
    (None: not in a pid namespace of its own). Raises SandboxRefusedError."""
    report = _Report(policy.strict)
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and not pidns.parent_alive(parent):
        os._exit(1)
    if parent is None:
        report.missing("pid_namespace", "the worker was not forked into a pid namespace")
    else:
        report.applied("pid_namespace")
    scratch = "/tmp"
    if _namespaces(policy, report):
        _view(policy)
        scratch = _scratch(policy)
        os.chdir(policy.plugin_dir)
    _rlimits(policy, report)  # before the identity: an unprivileged process could lower them
    _identity(policy, report)
    # A credential change clears PDEATHSIG: arm it again, then check the parent did not go in
    # between (its pid namespace hides it from getppid).
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and not pidns.parent_alive(parent):
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    report.applied("no_new_privs")
    _landlock(policy, scratch, report)
    reason = seccomp.supported()
    if reason is not None:
        report.missing("seccomp", reason)
    else:
        try:
            seccomp.install(network=policy.network, execute=policy.exec)
        except OSError as exc:
            report.missing("seccomp", str(exc))
        else:
            report.applied("seccomp")
    return SandboxReport(layers=report.layers)
