"""Measured and signed plugins: what runs is what was measured, and under ``enforce`` only what
a trusted key signed. With the real host, real workers and the real agent-host command."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import signal
from pathlib import Path

import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.supervisor import Supervisor
from agent_host.host.updates.content import measure, snapshot
from agent_host.host.updates.pins import PINS_FILE, is_pinned
from agent_host.host.updates.signing import load_private, load_public, new_key_pair, sign, verify
from tests.helpers import agent_host, exec_event, make_plugin, recording

SAYS = """\
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_event(self, event):
        return Finding(rule="says", severity="info", message="{word}")
"""


def plugin(root: Path, name: str, word: str = "original") -> Path:
    return make_plugin(root, name, SAYS.replace("{word}", word))


class TestMeasurement:
    def test_any_changed_added_or_removed_file_changes_it_caches_do_not(
        self, tmp_path: Path
    ) -> None:
        folder = plugin(tmp_path, "measured")
        first = measure(folder)
        assert first.startswith("sha256:") and measure(folder) == first
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "detector.cpython-311.pyc").write_bytes(b"cache")
        (folder / "plugin.sig").write_text("{}")
        assert measure(folder) == first
        (folder / "rules.yml").write_text("a: 1\n")
        added = measure(folder)
        (folder / "rules.yml").write_text("a: 2\n")
        changed = measure(folder)
        (folder / "rules.yml").unlink()
        assert len({first, added, changed}) == 3 and measure(folder) == first

    def test_the_copy_is_the_measured_bytes_and_read_only(self, tmp_path: Path) -> None:
        folder = plugin(tmp_path, "copied")
        content = snapshot(folder, tmp_path / "content")
        assert content.measurement == measure(folder) == measure(content.copy)
        assert (content.copy / "detector.py").read_bytes() == (folder / "detector.py").read_bytes()
        assert oct((content.copy / "detector.py").stat().st_mode & 0o777) == "0o444"
        assert oct(content.copy.stat().st_mode & 0o777) == "0o555"


class TestSignatures:
    def test_signed_tampered_untrusted_and_forged(self, tmp_path: Path) -> None:
        ours, _ = new_key_pair(tmp_path / "ours")
        theirs, _ = new_key_pair(tmp_path / "theirs")
        trusted = [load_public(tmp_path / "ours.pub")]
        folder = plugin(tmp_path, "signed")
        sign(folder, load_private(ours))
        assert verify(folder, measure(folder), trusted).signed
        (folder / "detector.py").write_text((folder / "detector.py").read_text() + "# x\n")
        assert verify(folder, measure(folder), trusted).problem == (
            "the content changed since it was signed"
        )
        sign(folder, load_private(theirs))
        assert "which is not trusted" in verify(folder, measure(folder), trusted).problem
        sign(folder, load_private(ours))
        document = json.loads((folder / "plugin.sig").read_text())
        document["signature"] = base64.b64encode(b"\0" * 64).decode()
        (folder / "plugin.sig").write_text(json.dumps(document))
        assert verify(folder, measure(folder), trusted).problem.startswith("bad signature")
        assert oct((tmp_path / "ours.key").stat().st_mode & 0o777) == "0o600"


class TestEnforce:
    def test_a_tampered_plugin_is_refused_and_findings_name_the_content(
        self, tmp_path: Path
    ) -> None:
        plugins = tmp_path / "plugins"
        good, tampered = plugin(plugins, "good"), plugin(plugins, "tampered")
        key, _ = new_key_pair(tmp_path / "ops")
        for folder in (good, tampered):
            sign(folder, load_private(key))
        (tampered / "detector.py").write_text(SAYS.replace("{word}", "evil"))
        recording(tmp_path / "rec.jsonl", [exec_event(f"/usr/bin/e{i}") for i in range(3)])
        trust = ["--signatures", "enforce", "--trusted-key", str(tmp_path / "ops.pub")]
        run = agent_host(["replay", "rec.jsonl", "--plugins", "plugins", *trust], cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        (refused,) = run.logs_with("plugin refused: not signed by a trusted key")
        assert refused["plugin"] == "tampered"
        assert refused["reason"] == "the content changed since it was signed"
        assert {f.plugin for f in run.findings} == {"good"}
        signer = load_public(tmp_path / "ops.pub")
        for finding in run.findings:
            assert finding.plugin_measurement == measure(good)
            assert finding.plugin_signer == verify(good, measure(good), [signer]).signer != ""
        (row,) = run.summary["plugins"] if run.summary else []
        assert row["measurement"] == measure(good)


class TestWhatRunsIsWhatWasMeasured:
    def test_a_file_changed_after_the_start_does_not_reach_the_worker(self, tmp_path: Path) -> None:
        folder = plugin(tmp_path / "plugins", "steady")
        measured = measure(folder)

        async def scenario() -> tuple[list[str], Supervisor]:
            sink = CollectingSink()
            sup = Supervisor(
                HostConfig(state_dir=None),
                [Manifest.load(folder / "plugin.toml")],
                sink,
                RestartPolicy(backoff_s=0.01),
            )
            await sup.start()
            runner = sup.plugins["steady"]
            (folder / "detector.py").write_text(SAYS.replace("{word}", "swapped"))
            pid = runner.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the next worker loads the plugin again
            while runner.phase is not Phase.RUNNING or runner.pid == pid:
                await asyncio.sleep(0.01)
            await sup.publish(exec_event("/usr/bin/after"))
            await sup.drain()
            await sup.stop()
            return [f.message for f in sink.findings], sup

        with structlog.testing.capture_logs():
            messages, sup = asyncio.run(scenario())
        assert messages == ["original"]
        assert sup.plugins["steady"].content.measurement == measured

    def test_a_refused_new_version_leaves_the_running_one(self, tmp_path: Path) -> None:
        key, _ = new_key_pair(tmp_path / "ops")
        folder = plugin(tmp_path / "plugins", "kept")
        sign(folder, load_private(key))
        manifest = Manifest.load(folder / "plugin.toml")

        async def scenario() -> tuple[dict[str, list[str]], list[str]]:
            sink = CollectingSink()
            config = HostConfig(
                state_dir=None, signatures="enforce", trusted_keys=(tmp_path / "ops.pub",)
            )
            sup = Supervisor(config, [manifest], sink)
            await sup.start()
            (folder / "detector.py").write_text(SAYS.replace("{word}", "unsigned"))
            report = await sup.reload([manifest])
            await sup.publish(exec_event("/usr/bin/after"))
            await sup.drain()
            await sup.stop()
            return report, [f.message for f in sink.findings]

        with structlog.testing.capture_logs():
            report, messages = asyncio.run(scenario())
        assert report["refused"] == ["kept"] and report["kept"] == ["kept"]
        assert messages == ["original"]


def test_the_bundled_plugins_pins_are_current() -> None:
    """``--signatures enforce`` runs the bundled plugins by their pinned measurements: a change
    to one of them without a new pin would leave it refused, as shipped."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "pin_bundled_plugins.py"
    spec = importlib.util.spec_from_file_location("pin_bundled_plugins", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pinned = json.loads(PINS_FILE.read_text())
    assert pinned == module.current(), "stale pins: run python scripts/pin_bundled_plugins.py"
    assert set(pinned) == {"sigma", "suspicious_exec", "yara_scan", "ransomware_burst"}
    assert all(is_pinned(m) for m in pinned.values())
    assert not is_pinned("sha256:" + "0" * 64)
