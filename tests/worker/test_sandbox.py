"""The worker's sandbox, layer by layer: applied to a real child in a fresh interpreter, then
tried from inside as a hostile plugin would, and judged by what the kernel let through."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_host.protocol import SandboxPolicy

PROBE = Path(__file__).with_name("sandbox_probe.py")
ROOT = Path(__file__).resolve().parents[2]
UID = 0x7FFE_0001

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's namespaces need root")


def confined(tmp_path: Path, **grants: Any) -> dict[str, Any]:
    plugin = tmp_path / "plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / "plugin.py").write_text("")
    secret = tmp_path / "host-secret"
    secret.write_text("the host's")
    policy = SandboxPolicy(
        uid=UID,
        gid=UID,
        plugin_dir=str(plugin),
        socket_dir=str(plugin),
        tmp_mb=16,
        strict=True,
        **grants,
    )
    done = subprocess.run(
        [sys.executable, str(PROBE), base64.b64encode(policy.SerializeToString()), str(secret)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a worker under the default policy (nothing granted) could do."""
    return confined(tmp_path_factory.mktemp("sandbox"))


class TestDefaultPolicy:
    def test_every_layer_is_active(self, seen: dict[str, Any]) -> None:
        assert seen["layers"] == {
            "pid_namespace": True,
            "mount_namespace": True,
            "ipc_namespace": True,
            "uts_namespace": True,
            "network_namespace": True,
            "identity": True,
            "capabilities": True,
            "no_new_privs": True,
            "rlimits": True,
            "landlock": True,
            "seccomp": True,
        }

    def test_its_own_identity_without_capabilities(self, seen: dict[str, Any]) -> None:
        assert seen["uid"] == UID
        assert seen["capabilities"] == {
            "CapInh": 0,
            "CapPrm": 0,
            "CapEff": 0,
            "CapBnd": 0,
            "CapAmb": 0,
        }

    def test_it_sees_only_its_own_processes(self, seen: dict[str, Any]) -> None:
        assert seen["pid"] == 2
        assert seen["signal_host"] == errno.ESRCH
        assert seen["ptrace_host"] == errno.EPERM
        assert seen["hostname"] == "agent-host-worker"

    def test_it_reads_only_what_it_needs(self, seen: dict[str, Any]) -> None:
        assert seen["read_shadow"] == errno.EACCES
        assert seen["read_host_file"] in (errno.ENOENT, errno.EACCES)
        assert seen["import_stdlib"] == "ok"

    def test_it_writes_only_its_scratch_folder_up_to_its_cap(self, seen: dict[str, Any]) -> None:
        assert seen["write_plugin_dir"] in (errno.EROFS, errno.EACCES)
        assert seen["write_etc"] in (errno.EROFS, errno.EACCES)
        assert seen["scratch_small"] == "ok"
        assert seen["scratch_over_cap"] == errno.ENOSPC

    def test_no_network_and_no_programs(self, seen: dict[str, Any]) -> None:
        assert seen["unix_socket"] == "ok"
        assert seen["inet_socket"] == errno.EPERM
        assert seen["packet_socket"] == errno.EPERM
        assert seen["interfaces"] == ["lo"]
        assert seen["exec"] == errno.EPERM


class TestGrants:
    def test_network_granted_keeps_the_host_network_and_inet_sockets(self, tmp_path: Path) -> None:
        seen = confined(tmp_path, network=True)
        assert seen["layers"]["network_namespace"] is False
        assert seen["inet_socket"] == "ok"
        assert seen["packet_socket"] == errno.EPERM
        assert seen["interfaces"] != ["lo"]

    def test_a_granted_path_is_readable_and_still_read_only(self, tmp_path: Path) -> None:
        seen = confined(tmp_path, read_paths=[str(tmp_path / "host-secret")])
        assert seen["read_host_file"] == "ok"
