"""Attestation with the real agent-host command and a real running host: the report describes
what that host runs (asked over its control socket), verifies, and fails with a wrong nonce, a
wrong key or a forged payload; content the host refused is reported refused; with no running
host there is no report."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BUNDLED_PLUGINS, BackgroundHost, HostRun, agent_host, make_plugin

SAYS = """\
from agent_host.sdk import Plugin

class Detector(Plugin):
    pass
"""


def running_host(cwd: Path, *more: str) -> BackgroundHost:
    host = BackgroundHost(
        ["run", "--source", "synthetic", "--rate", "50", "--findings", "f.jsonl", *more], cwd
    )
    host.wait_log("control socket")
    return host


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    for name in ("alpha", "beta"):
        make_plugin(tmp_path / "plugins", name, SAYS)
    running = running_host(tmp_path, "--plugins", "plugins")
    yield tmp_path
    running.stop()


def attest(cwd: Path, nonce: str, out: str) -> HostRun:
    return agent_host(["attest", "--nonce", nonce, "-o", out, "--state-dir", "state"], cwd=cwd)


def verify(cwd: Path, report: str, nonce: str, key: str = "state/host.pub", *more: str) -> HostRun:
    return agent_host(["attest", "verify", report, "--key", key, "--nonce", nonce, *more], cwd=cwd)


def predicate(path: Path) -> dict[str, object]:
    payload = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    assert payload["_type"] == "https://in-toto.io/Statement/v1"
    result: dict[str, object] = payload["predicate"]
    return result


def plugins_of(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in report["plugins"]}  # type: ignore[attr-defined]


class TestAttest:
    def test_a_report_verifies_and_says_what_runs(self, host: Path) -> None:
        made = attest(host, "n-1", "report.json")
        assert made.returncode == 0, made.stderr
        report = predicate(host / "report.json")
        assert report["nonce"] == "n-1"
        assert report["signatures"] == "warn"
        plugins = plugins_of(report)
        assert set(plugins) == {"alpha", "beta"}
        assert str(plugins["alpha"]["measurement"]).startswith("sha256:")
        assert plugins["alpha"]["state"] == "running"
        assert plugins["alpha"]["signer"] == ""  # nobody trusted signed it
        assert "seccomp" in plugins["alpha"]["sandbox_layers"]  # type: ignore[operator]
        checked = verify(host, "report.json", "n-1")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.startswith("verified: ")

    def test_wrong_nonce_wrong_key_and_forged_payload_fail(self, host: Path) -> None:
        assert attest(host, "n-1", "report.json").returncode == 0
        replayed = verify(host, "report.json", "n-2")
        assert replayed.returncode == 1
        assert replayed.stdout.strip() == "not verified: nonce 'n-1' is not 'n-2'"
        assert agent_host(["keys", "new", "--out", "other"], cwd=host).returncode == 0
        assert verify(host, "report.json", "n-1", "other.pub").stdout.startswith(
            "not verified: not signed by key"
        )
        envelope = json.loads((host / "report.json").read_text())
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["predicate"]["plugins"][0]["measurement"] = "sha256:" + "0" * 64
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        (host / "forged.json").write_text(json.dumps(envelope))
        assert verify(host, "forged.json", "n-1").returncode == 1

    def test_an_expected_measurement_is_checked(self, host: Path) -> None:
        assert attest(host, "n-1", "report.json").returncode == 0
        running = plugins_of(predicate(host / "report.json"))
        expected = {name: p["measurement"] for name, p in running.items()}
        (host / "expected.json").write_text(json.dumps(expected))
        assert verify(host, "report.json", "n-1", *_expect("expected.json")).returncode == 0
        expected["beta"] = "sha256:" + "1" * 64
        (host / "other.json").write_text(json.dumps(expected))
        changed = verify(host, "report.json", "n-1", *_expect("other.json"))
        assert changed.returncode == 1
        assert changed.stdout.strip() == "not verified: not the expected content: beta"


def _expect(path: str) -> tuple[str, str, str]:
    return ("state/host.pub", "--expected", path)


def test_without_a_running_host_there_is_no_report(tmp_path: Path) -> None:
    made = attest(tmp_path, "n-1", "report.json")
    assert made.returncode != 0
    assert "no running host" in made.stderr and "Traceback" not in made.stderr
    assert not (tmp_path / "report.json").exists()
    assert not (tmp_path / "state" / "host.key").exists()  # no key made for nothing


def test_enforce_runs_the_bundled_plugins_as_shipped_and_reports_a_tampered_copy_refused(
    tmp_path: Path,
) -> None:
    """``--signatures enforce`` with the bundled plugins: they run, signed by their pins; a copy
    of one with a byte changed is refused, and the report says so."""
    tampered = tmp_path / "vendor" / "suspicious_exec"
    shutil.copytree(BUNDLED_PLUGINS / "suspicious_exec", tampered)
    toml = (tampered / "plugin.toml").read_text()
    (tampered / "plugin.toml").write_text(
        toml.replace('name = "suspicious_exec"', 'name = "suspicious_exec_x"')
    )
    running = running_host(
        tmp_path,
        *("--plugins", str(BUNDLED_PLUGINS), "--plugins", "vendor", "--signatures", "enforce"),
    )
    try:
        made = attest(tmp_path, "n-1", "report.json")
    finally:
        code, _ = running.stop()
    assert made.returncode == 0, made.stderr
    assert code == 0, running.log_path.read_text()
    report = predicate(tmp_path / "report.json")
    assert report["signatures"] == "enforce"
    plugins = plugins_of(report)
    bundled = {"sigma", "suspicious_exec", "yara_scan", "ransomware_burst"}
    assert {name for name, p in plugins.items() if p["state"] == "running"} == bundled
    assert all(str(plugins[name]["signer"]).endswith("(bundled)") for name in bundled)
    assert plugins["suspicious_exec_x"]["state"] == "refused"
    assert "not signed by a trusted key" in str(plugins["suspicious_exec_x"]["reason"])
    assert "was never awaited" not in running.log_path.read_text()
