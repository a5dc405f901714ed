"""The shipped systemd unit gives the host exactly what it needs: under the unit's own
capability bounding set and address families, applied by hand (a socket-family seccomp filter
as systemd installs for RestrictAddressFamilies, then ``setpriv --bounding-set``), every sensor
starts, every sandbox layer is applied, and a process, a file change and a connection named by
its DNS answer (AF_PACKET) all reach a plugin. ``systemd-analyze security`` scores the unit."""

from __future__ import annotations

import errno
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_host.cli.systemd import UNIT_TEMPLATE
from tests.helpers import BackgroundHost, make_plugin, named_connection, read_findings

pytestmark = pytest.mark.usefixtures("audit_lock")  # one audit reader a machine

UNIT = UNIT_TEMPLATE.read_text()
#: The most the score may be (systemd-analyze security: 0 safe, 10 exposed).
SCORE_AT_MOST = 4.7

#: Reports what the test does: its marker process, its marker file, a connection with a name.
WITNESS = """\
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.marker = config["marker"]

    def on_event(self, event):
        kind = event.WhichOneof("kind")
        if kind == "process" and self.marker in " ".join(event.process.cmdline):
            return Finding(rule="process", severity="info", message=event.process.exe)
        if kind == "file" and self.marker in event.file.path:
            return Finding(rule="file", severity="info", message=event.file.path)
        if kind == "network" and event.network.remote_hostname:
            return Finding(rule="network", severity="info", message=event.network.remote_hostname)
        return None
"""


def unit_setting(name: str) -> list[str]:
    (line,) = re.findall(rf"(?m)^{name}=(.*)$", UNIT)
    return line.split()


_SECCOMP_HELPER = """\
import ctypes, os, struct, sys
families, argv = [int(f) for f in sys.argv[1].split(",")], sys.argv[2:]
AUDIT_ARCH_X86_64, NR_SOCKET, EAFNOSUPPORT = 0xC000003E, 41, 97
code = [(0x20, 0, 0, 4), (0x15, 1, 0, AUDIT_ARCH_X86_64), (0x06, 0, 0, 0x7FFF0000),
        (0x20, 0, 0, 0), (0x15, 0, len(families) + 2, NR_SOCKET), (0x20, 0, 0, 16)]
code += [(0x15, len(families) - i, 0, f) for i, f in enumerate(families)]
code += [(0x06, 0, 0, 0x00050000 | EAFNOSUPPORT), (0x06, 0, 0, 0x7FFF0000)]
raw = b"".join(struct.pack("=HBBI", *c) for c in code)
class Prog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))
buf = ctypes.create_string_buffer(raw, len(raw))
prog = Prog(len(code), ctypes.cast(buf, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS: NoNewPrivileges=yes
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execvp(argv[0], argv)
"""


def under_the_unit(command: list[str]) -> list[str]:
    """``command`` under the unit's RestrictAddressFamilies, NoNewPrivileges and
    CapabilityBoundingSet."""
    families = [str(int(getattr(socket, name))) for name in unit_setting("RestrictAddressFamilies")]
    caps = ",".join(
        f"+{cap.removeprefix('CAP_').lower()}" for cap in unit_setting("CapabilityBoundingSet")
    )
    setpriv = ["setpriv", f"--bounding-set=-all,{caps}", "--"]
    return [sys.executable, "-c", _SECCOMP_HELPER, ",".join(families), *setpriv, *command]


def _run_host(tmp_path: Path, name: str, wrap: bool) -> tuple[BackgroundHost, Path]:
    folder = tmp_path / name
    marker = f"agent-host-unit-{name}"
    make_plugin(
        folder / "plugins",
        "witness",
        WITNESS,
        subscribe=("process", "file", "network"),
        extra_toml=f'[config]\nmarker = "{marker}"\n',
    )
    args = ["run", "--sensors", "process,file,network", "--watch", str(folder)]
    args += ["--plugins", "plugins", "--findings", "f.jsonl", "--sandbox", "strict"]
    host = BackgroundHost(args, folder, wrap=under_the_unit if wrap else None)
    host.wait_log("plugin started")
    time.sleep(0.5)
    return host, folder


def _activity(folder: Path, marker: str) -> None:
    subprocess.run(["/bin/sh", "-c", f"true {marker}"], check=True)
    (folder / f"{marker}.txt").write_text("x")
    named_connection("unit.example.org", "127.0.0.9")
    time.sleep(1.5)


def _what_started(host: BackgroundHost) -> tuple[set[str], str]:
    logs = host.logs()
    sensors = {str(e.get("kind")) for e in logs if e.get("event") == "sensor started"}
    (layers,) = [str(e["layers"]) for e in logs if e.get("event") == "sandbox layers active"]
    return sensors, layers


@pytest.mark.slow  # 8 s: two hosts with every live sensor; .ci/run runs it after the test command
@pytest.mark.skipif(os.geteuid() != 0, reason="the unit runs the host as root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv (util-linux)")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the test's filter is for x86_64")
def test_sensors_and_sandbox_start_under_the_units_bounds(tmp_path: Path) -> None:
    results = {}
    for name, wrap in (("free", False), ("bounded", True)):
        host, folder = _run_host(tmp_path, name, wrap)
        try:
            _activity(folder, f"agent-host-unit-{name}")
        finally:
            code, _ = host.stop()
        assert code == 0, host.log_path.read_text()
        rules = {f.rule: f.message for f in read_findings(folder / "f.jsonl")}
        results[name] = (_what_started(host), rules)
    (free_started, free_seen), (bounded_started, bounded_seen) = results["free"], results["bounded"]
    assert bounded_started == free_started  # the same sensors, the same layers
    assert "SyscallSensor" in bounded_started[0] or "NetlinkProcessSensor" in bounded_started[0]
    assert set(bounded_seen) == {"process", "file", "network"}, bounded_seen
    assert bounded_seen["network"] == "unit.example.org"  # the DNS sensor's AF_PACKET works
    assert set(free_seen) == set(bounded_seen)


def test_the_address_family_filter_of_the_test_refuses_what_the_unit_leaves_out() -> None:
    """The hand-applied filter does bite: AF_VSOCK, which the unit does not list, opens without
    it and is refused under it."""
    if platform.machine() != "x86_64":
        pytest.skip("the test's filter is for x86_64")
    probe = "import socket\ntry:\n    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n"
    probe += "    print('open')\nexcept OSError as e:\n    print(e.errno)\n"
    families = [str(int(getattr(socket, n))) for n in unit_setting("RestrictAddressFamilies")]
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if free.stdout.strip() != "open":
        pytest.skip(f"AF_VSOCK does not open here: {free.stdout.strip() or free.stderr}")
    helper = [sys.executable, "-c", _SECCOMP_HELPER, ",".join(families)]
    bounded = subprocess.run([*helper, sys.executable, "-c", probe], capture_output=True, text=True)
    assert bounded.stdout.strip() == str(errno.EAFNOSUPPORT), bounded.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_units_exposure_score(tmp_path: Path) -> None:
    unit = tmp_path / "agent-host.service"
    unit.write_text(UNIT.replace("@EXEC@", "/usr/bin/python3 -m agent_host"))
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    (score,) = re.findall(r"Overall exposure level for agent-host.service: ([\d.]+)", out)
    assert float(score) <= SCORE_AT_MOST
    for setting in ("ProtectSystem=", "ProtectKernelTunables=", "ProtectHostname=", "UMask="):
        assert f"✓ {setting}" in out
    assert "✓ SystemCallFilter=~@module" in out and "✓ CapabilityBoundingSet=~CAP_SYS_MODULE" in out
    assert "AF_PACKET" in unit_setting("RestrictAddressFamilies")
