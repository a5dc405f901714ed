"""Attestation with the real agent-host command: a report that verifies, and fails with a wrong
nonce, a wrong key, changed content or a forged payload."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.helpers import HostRun, agent_host, make_plugin

SAYS = """\
from agent_host.sdk import Plugin

class Detector(Plugin):
    pass
"""


@pytest.fixture
def host(tmp_path: Path) -> Path:
    for name in ("alpha", "beta"):
        make_plugin(tmp_path / "plugins", name, SAYS)
    return tmp_path


def attest(cwd: Path, nonce: str, out: str) -> HostRun:
    args = ["attest", "--nonce", nonce, "--plugins", "plugins", "-o", out]
    return agent_host([*args, "--state-dir", "state"], cwd=cwd)


def verify(cwd: Path, report: str, nonce: str, key: str = "state/host.pub", *more: str) -> HostRun:
    return agent_host(["attest", "verify", report, "--key", key, "--nonce", nonce, *more], cwd=cwd)


def predicate(path: Path) -> dict[str, object]:
    payload = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    assert payload["_type"] == "https://in-toto.io/Statement/v1"
    result: dict[str, object] = payload["predicate"]
    return result


class TestAttest:
    def test_a_report_verifies_and_says_what_runs(self, host: Path) -> None:
        made = attest(host, "n-1", "report.json")
        assert made.returncode == 0, made.stderr
        report = predicate(host / "report.json")
        assert report["nonce"] == "n-1"
        plugins = {p["name"]: p for p in report["plugins"]}  # type: ignore[attr-defined]
        assert set(plugins) == {"alpha", "beta"}
        assert plugins["alpha"]["measurement"].startswith("sha256:")
        assert plugins["alpha"]["state"] == "ok"
        assert "seccomp" in plugins["alpha"]["sandbox_layers"]
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

    def test_a_changed_plugin_shows_in_the_next_report(self, host: Path) -> None:
        assert attest(host, "n-1", "report.json").returncode == 0
        report = predicate(host / "report.json")
        expected = {p["name"]: p["measurement"] for p in report["plugins"]}  # type: ignore[attr-defined]
        (host / "expected.json").write_text(json.dumps(expected))
        assert (
            verify(
                host, "report.json", "n-1", "state/host.pub", "--expected", "expected.json"
            ).returncode
            == 0
        )
        detector = host / "plugins" / "beta" / "detector.py"
        detector.write_text(detector.read_text() + "# changed\n")
        assert attest(host, "n-2", "next.json").returncode == 0
        changed = verify(host, "next.json", "n-2", "state/host.pub", "--expected", "expected.json")
        assert changed.returncode == 1
        assert changed.stdout.strip() == "not verified: not the expected content: beta"
