"""The host's half of a worker's sandbox: its identity, its session folder and its policy.

Each plugin gets a uid and gid of its own, taken from a range no account uses (above the
ranges systemd gives to dynamic users and to containers), so that it owns no file of the
host's, cannot signal or trace another plugin's worker, and is the only user that may enter its
session folder. The worker applies the policy to itself (``agent_host.worker.sandbox``); the
host only orders it, and reports what the machine allows from the zygote's probe.
"""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path
from typing import Final

import structlog

from agent_host.errors import SandboxUnavailableError
from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig, SandboxMode
from agent_host.host.limits import DATA_HEADROOM_MIB, MIB, THREAD_HEADROOM
from agent_host.host.manifest import Manifest
from agent_host.host.updates.content import Content
from agent_host.protocol import SANDBOX_LAYERS, SandboxLayer, SandboxPolicy, SandboxReport

log = structlog.get_logger("agent_host")

#: The first worker uid. Each host takes 256 of them, chosen by its pid, so that two hosts on
#: one machine rarely share one.
UID_BASE: Final = 0x7FF0_0000
_SLOTS_PER_HOST: Final = 256
_HOSTS: Final = 4096


def worker_uid(slot: int, host_pid: int | None = None) -> int:
    host = (os.getpid() if host_pid is None else host_pid) % _HOSTS
    return UID_BASE + host * _SLOTS_PER_HOST + slot % _SLOTS_PER_HOST


class WorkerSandbox:
    """What every worker of one plugin runs as and in."""

    def __init__(
        self, config: HostConfig, manifest: Manifest, content: Content, runtime_dir: Path, slot: int
    ):
        self._config = config
        self.manifest = manifest
        self.content = content
        self.uid = worker_uid(slot)
        self.session_dir = runtime_dir / f"worker-{slot}"
        self.session_dir.mkdir(mode=0o700)
        self._own(self.session_dir)

    @property
    def socket_path(self) -> Path:
        return self.session_dir / "session.sock"

    def _own(self, path: Path) -> None:
        """Hand ``path`` to the worker's uid (as root; elsewhere it stays the host's)."""
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.uid)

    def secure_socket(self) -> None:
        """The socket: the worker's uid alone may connect (root, the host, bypasses this)."""
        self.socket_path.chmod(0o600)
        self._own(self.socket_path)

    def policy(self) -> SandboxPolicy:
        grants = self.manifest.permissions
        limits = self.manifest.limits
        own_user = os.geteuid() == 0  # the identity layer gives it a uid of its own
        return SandboxPolicy(
            rlimit_data=(limits.memory_mb + DATA_HEADROOM_MIB) * MIB,
            rlimit_nofile=limits.open_files,
            rlimit_nproc=limits.processes + THREAD_HEADROOM if own_user else 0,
            uid=self.uid,
            gid=self.uid,
            plugin_dir=str(self.content.copy),
            socket_dir=str(self.session_dir),
            read_paths=list(grants.read),
            network=grants.network,
            exec=grants.exec,
            tmp_mb=self._config.scratch_mb,
            strict=self._config.sandbox == "strict",
        )

    def policy_argument(self) -> str:
        return base64.b64encode(self.policy().SerializeToString()).decode()


def decode_report(text: str) -> SandboxReport | None:
    with contextlib.suppress(ValueError):
        return SandboxReport.FromString(base64.b64decode(text))
    return None


def machine_report(probe: str, cgroups: Cgroups | None) -> SandboxReport:
    """Every layer on this machine: the worker's, as the probe (base64 SandboxReport) found
    them, and the host's own (``cgroups`` None: turned off in the host's settings)."""
    report = decode_report(probe) or SandboxReport()
    if not report.layers:
        report.layers.add(name="seccomp", active=False, reason="the sandbox probe did not run")
    cgroup = report.layers.add(name="cgroup", active=cgroups is not None)
    if cgroups is None:
        cgroup.reason = "turned off in the host's settings"
    elif not cgroups.available:
        cgroup.active, cgroup.reason = False, cgroups.unavailable
    cpu = report.layers.add(name="cpu", active=cgroup.active)
    if not cgroup.active:
        cpu.reason = cgroup.reason
    elif cgroups is not None and cgroups.cpu_unavailable:
        cpu.active = False
        cpu.reason = f"{cgroups.cpu_unavailable}: the watcher kills above cpu_cores instead"
    session = report.layers.add(name="session", active=os.geteuid() == 0)
    if not session.active:
        session.reason = "the host is not root: every process of its user may connect"
    return report


def for_plugin(machine: SandboxReport, manifest: Manifest) -> list[SandboxLayer]:
    """The layers a worker of ``manifest`` gets on this machine, in SANDBOX_LAYERS order: what
    the probe found, less what the manifest is granted away."""
    found = {layer.name: layer for layer in machine.layers}
    layers = []
    for name in SANDBOX_LAYERS:
        layer = found.get(name)
        if name == "network_namespace" and manifest.permissions.network:
            layer = SandboxLayer(name=name, active=False, reason="granted the network")
        if layer is not None:
            layers.append(layer)
    return layers


def describe(layers: list[SandboxLayer]) -> str:
    """One line: the active layers, then each missing one with its reason."""
    active = [layer.name for layer in layers if layer.active]
    missing = [f"{layer.name} ({layer.reason})" for layer in layers if not layer.active]
    text = " ".join(active) or "none"
    return f"{text}; missing: {', '.join(missing)}" if missing else text


def checked_machine(probe: str, cgroups: Cgroups | None, config: HostConfig) -> SandboxReport:
    """What every worker's sandbox holds on this machine, each missing layer said once.

    Raises:
        SandboxUnavailableError: a layer is missing and the sandbox is strict (a cgroup the
            operator turned off is not missing; nor is ``cpu``, whose bound the host's watcher
            keeps where the kernel cannot, by killing instead of throttling).
    """
    report = machine_report(probe, cgroups)
    active = [layer.name for layer in report.layers if layer.active]
    log.info("sandbox layers active", layers=" ".join(active), mode=config.sandbox)
    for layer in report.layers:
        if not layer.active:
            log.warning(f"sandbox layer unavailable: {layer.name}", reason=layer.reason)
            chosen_off = layer.name == "cgroup" and not config.cgroups
            kept_by_watcher = layer.name == "cpu"
            if config.sandbox is SandboxMode.STRICT and not (chosen_off or kept_by_watcher):
                raise SandboxUnavailableError(layer.name, layer.reason)
    return report
