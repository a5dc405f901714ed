"""ransomware_burst, run in a real worker."""

from __future__ import annotations

import os
from pathlib import Path

from agent_host.testing import file_event, run_plugin

PLUGIN = Path(__file__).resolve().parents[2] / "agent_host" / "plugins" / "ransomware_burst"


def renames(folder: str, n: int, pid: int = 0) -> list:  # type: ignore[type-arg]
    return [
        file_event(f"{folder}/doc{i}.txt", "MOVED", f"{folder}/doc{i}.txt.locked", pid=pid)
        for i in range(n)
    ]


class TestRansomwareBurst:
    """Many distinct files changed under one folder within the window: one finding."""

    def test_burst_of_renames(self) -> None:
        run = run_plugin(
            PLUGIN, renames("/home/ann/Documents/2024", 150), config={"threshold": 100}
        )
        assert run.rules() == ["file_change_burst"]
        finding = run.findings[0]
        assert finding.attributes["key"] == "folder:/home/ann/Documents"
        assert finding.attributes["distinct_files"] == "100"
        assert finding.message == "100 files changed under /home/ann/Documents within 10s"
        assert list(finding.techniques) == ["T1486"]
        assert max(finding.event_ids) == 100  # it fired on the 100th

    def test_by_process_across_folders(self) -> None:
        events = [file_event(f"/srv/share{i % 7}/sub{i}/f", "MODIFIED", pid=666) for i in range(60)]
        run = run_plugin(PLUGIN, events, config={"threshold": 50, "depth": 4})
        assert [f.attributes["key"] for f in run.findings] == ["pid:666"]

    def test_below_threshold_and_repeats_of_one_file(self) -> None:
        events = renames("/home/ann/Documents", 40)
        events += [file_event("/home/ann/Documents/big.log", "MODIFIED") for _ in range(500)]
        run = run_plugin(PLUGIN, events, config={"threshold": 50})
        assert run.findings == []

    def test_entropy_check_names_encrypted_files(self, tmp_path: Path) -> None:
        events = []
        for i in range(30):
            f = tmp_path / f"f{i}.bin"
            f.write_bytes(os.urandom(4096) if i % 2 else b"plain text " * 400)
            events.append(file_event(str(f), "MODIFIED"))
        run = run_plugin(PLUGIN, events, config={"threshold": 30, "entropy_check": True})
        assert len(run.findings) == 1
        named = run.findings[0].attributes["high_entropy_files"].split(", ")
        assert sorted(named) == sorted(str(tmp_path / f"f{i}.bin") for i in range(1, 30, 2))
        assert run.findings[0].severity == run.findings[0].CRITICAL
