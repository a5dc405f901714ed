"""What a manifest may ask for, what the operator lets it have, and what the host says about
the sandbox it gives: with the real host and the real agent-host command."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import structlog

from agent_host.errors import ManifestError, SandboxUnavailableError
from agent_host.host.caps import Caps
from agent_host.host.config import HostConfig
from agent_host.host.manifest import Limits, Manifest
from agent_host.host.sandbox import checked_machine
from agent_host.protocol import SandboxReport
from tests.helpers import agent_host, exec_event, make_plugin, recording

HONEST = """\
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_event(self, event):
        return Finding(rule="seen", severity="info", message=str(event.seq))
"""


def manifest(tmp_path: Path, toml: str) -> Manifest:
    folder = make_plugin(tmp_path / "plugins", "asker", HONEST, extra_toml=toml)
    return Manifest.load(folder / "plugin.toml")


class TestManifestPermissions:
    def test_read_network_and_exec_are_read(self, tmp_path: Path) -> None:
        m = manifest(tmp_path, '[permissions]\nread = ["/srv/data/"]\nnetwork = true\n')
        assert m.permissions.read == ("/srv/data",)
        assert m.permissions.network is True and m.permissions.exec is False

    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            ('read = ["/"]', "'/' cannot be granted"),
            ('read = ["/proc/1"]', "'/proc/1' cannot be granted"),
            ('read = ["relative"]', "'relative' is not an absolute path"),
            ('read = ["/srv/../etc"]', "is not an absolute path"),
            ("network = 1", "must be true or false"),
            ("root = true", "unknown permission"),
        ],
    )
    def test_what_cannot_be_granted_is_named(self, tmp_path: Path, toml: str, message: str) -> None:
        with pytest.raises(ManifestError) as refused:
            manifest(tmp_path, f"[permissions]\n{toml}\n")
        assert message in str(refused.value)
        assert "permissions." in str(refused.value)


class TestOperatorCaps:
    @pytest.mark.parametrize(
        ("toml", "key"),
        [
            ("[limits]\nmemory_mb = 8192\n", "limits.memory_mb"),
            ("[limits]\nbatch_deadline_s = 600\n", "limits.batch_deadline_s"),
            ("[permissions]\nnetwork = true\n", "permissions.network"),
            ("[permissions]\nexec = true\n", "permissions.exec"),
        ],
    )
    def test_more_than_the_caps_allow_is_refused(self, tmp_path: Path, toml: str, key: str) -> None:
        refusal = Caps().check(manifest(tmp_path, toml))
        assert refusal is not None and refusal.key == key

    def test_the_operator_may_allow_more(self, tmp_path: Path) -> None:
        asks = manifest(tmp_path, "[limits]\nmemory_mb = 4096\n[permissions]\nnetwork = true\n")
        assert Caps(Limits(memory_mb=4096), network=True).check(asks) is None
        assert Caps(read=("/srv",)).check(
            manifest(tmp_path / "b", '[permissions]\nread = ["/etc"]\n')
        )

    def test_a_refused_plugin_is_named_and_the_others_run(self, tmp_path: Path) -> None:
        make_plugin(
            tmp_path / "plugins", "greedy", HONEST, extra_toml="[limits]\nmemory_mb = 8192\n"
        )
        make_plugin(tmp_path / "plugins", "modest", HONEST)
        recording(tmp_path / "rec.jsonl", [exec_event(f"/usr/bin/e{i}") for i in range(5)])
        run = agent_host(["replay", "rec.jsonl", "--plugins", "plugins"], cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        (refused,) = run.logs_with("plugin refused: it asks for more than allowed")
        assert (
            "greedy/plugin.toml: limits.memory_mb: 8192 exceeds the operator's cap"
            in (refused["error"])
        )
        assert sorted({f.plugin for f in run.findings}) == ["modest"]
        assert len(run.findings) == 5


def probe_missing(layer: str) -> str:
    report = SandboxReport()
    report.layers.add(name="seccomp", active=True)
    report.layers.add(name=layer, active=False, reason="not on this kernel")
    return base64.b64encode(report.SerializeToString()).decode()


class TestHonestAboutMissingLayers:
    """The decision, given a machine whose probe found a layer missing."""

    def test_strict_refuses_to_start(self, tmp_path: Path) -> None:
        config = HostConfig(sandbox="strict", state_dir=None)
        with pytest.raises(SandboxUnavailableError) as refused:
            checked_machine(probe_missing("landlock"), None, config)
        assert str(refused.value).startswith("sandbox layer unavailable: landlock: not on")

    def test_warn_says_so_once_per_layer_and_goes_on(self, tmp_path: Path) -> None:
        config = HostConfig(sandbox="warn", state_dir=None)
        with structlog.testing.capture_logs() as logs:
            report = checked_machine(probe_missing("landlock"), None, config)
        said = [e["event"] for e in logs if e["event"].startswith("sandbox layer unavailable")]
        assert said.count("sandbox layer unavailable: landlock") == 1
        assert {layer.name: layer.active for layer in report.layers}["landlock"] is False


class TestPluginsList:
    def test_it_shows_grants_and_layers(self, tmp_path: Path) -> None:
        make_plugin(
            tmp_path / "plugins", "reader", HONEST, extra_toml='[permissions]\nread = ["/srv"]\n'
        )
        run = agent_host(["plugins", "list", "--plugins", "plugins"], cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith("sandbox on this machine: ")
        assert "    granted: read /srv; network no; exec no" in lines
        (layers,) = [line for line in lines if line.startswith("    sandbox: ")]
        assert "seccomp" in layers and "landlock" in layers
