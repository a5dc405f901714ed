"""End to end on real activity: live sensors, the bundled plugin, record and replay."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_host.protocol import Finding
from tests.helpers import BackgroundHost, agent_host, read_findings

pytestmark = pytest.mark.usefixtures("audit_lock")  # one audit reader a machine

REPO = Path(__file__).resolve().parent.parent.parent


def bundled_plugins(root: Path) -> Path:
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "suspicious_exec").symlink_to(REPO / "agent_host" / "plugins" / "suspicious_exec")
    return plugins


def run_copied_binaries(folder: Path, count: int) -> list[Path]:
    """Execute ``count`` copies of sleep from ``folder`` (each lives 0.2 s)."""
    binaries = []
    for n in range(count):
        binary = folder / f"dropped-{n}"
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
        subprocess.run([str(binary), "0.2"], check=True)
        binaries.append(binary)
    return binaries


def ours(
    findings: list[Finding], folder: Path
) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """The findings about our own activity, without what differs from run to run."""
    return sorted(
        (f.plugin, f.rule, tuple(sorted(f.attributes.items())))
        for f in findings
        if f.attributes.get("exe", "").startswith(str(folder))
    )


class TestLive:
    """The bundled plugin catches a real execution from /tmp; a recording replays the same."""

    def test_exec_from_tmp_detected_live_and_in_replay(self, tmp_path: Path) -> None:
        assert str(tmp_path).startswith("/tmp/"), "the detection is about /tmp"
        plugins = bundled_plugins(tmp_path)
        drop = tmp_path / "drop"
        drop.mkdir()
        live = BackgroundHost(
            [
                "run",
                "--sensors",
                "process,file",
                "--watch",
                str(drop),
                "--plugins",
                str(plugins),
                "--findings",
                "live.jsonl",
                "--summary-json",
                "live.json",
            ],
            tmp_path,
        )
        recorder = BackgroundHost(
            ["record", "--sensors", "process,file", "--watch", str(drop), "-o", "rec.jsonl"],
            tmp_path,
        )
        live.wait_log("sensor started", count=2)
        recorder.wait_log("sensor started", count=2)

        binaries = run_copied_binaries(drop, 3)

        code, _ = live.stop()
        assert code == 0
        code, out = recorder.stop()
        assert code == 0
        assert out.startswith("recorded ")
        live_findings = ours(read_findings(tmp_path / "live.jsonl"), drop)
        assert [a for _, _, a in live_findings] == [
            (("cmdline", f"{b} 0.2"), ("exe", str(b))) for b in binaries
        ]
        assert {(p, r) for p, r, _ in live_findings} == {
            ("suspicious_exec", "exec_from_writable_dir")
        }
        summary = json.loads((tmp_path / "live.json").read_text())
        assert summary["sensors"]["dropped"] == {}
        assert summary["sensors"]["emitted"]["file"] >= 3  # the copies were created

        replay = agent_host(
            ["replay", "rec.jsonl", "--plugins", str(plugins), "--quiet"], cwd=tmp_path
        )
        assert replay.returncode == 0
        assert ours(replay.findings, drop) == live_findings


EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class TestLiveFiles:
    """On real file activity: the EICAR file and a burst of renames are caught."""

    def test_eicar_and_rename_burst(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        for name in ("yara_scan", "ransomware_burst"):
            (plugins / name).symlink_to(REPO / "agent_host" / "plugins" / name)
        watched = tmp_path / "watched"
        (watched / "docs").mkdir(parents=True)
        for i in range(200):
            (watched / "docs" / f"report-{i}.txt").write_text(f"quarterly report {i}\n")
        host = BackgroundHost(
            [
                "run",
                "--sensors",
                "file",
                "--watch",
                str(watched),
                "--plugins",
                str(plugins),
                "--findings",
                "f.jsonl",
                "--quiet",
            ],
            tmp_path,
        )
        host.wait_log("sensor started")

        (watched / "eicar.com").write_text(EICAR)
        for i in range(200):
            doc = watched / "docs" / f"report-{i}.txt"
            doc.rename(doc.with_suffix(".txt.locked"))
        import time

        time.sleep(1.0)
        code, _ = host.stop()
        assert code == 0
        findings = read_findings(tmp_path / "f.jsonl")
        yara = [f for f in findings if f.plugin == "yara_scan"]
        assert [(f.rule, f.attributes["path"]) for f in yara] == [
            ("yara.eicar_test_file", str(watched / "eicar.com"))
        ]
        burst = [f for f in findings if f.plugin == "ransomware_burst"]
        assert [f.rule for f in burst] == ["file_change_burst"]
        assert int(burst[0].attributes["distinct_files"]) >= 100
        assert list(burst[0].techniques) == ["T1486"]
