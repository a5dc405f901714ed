"""The file sensor on real file activity."""

from __future__ import annotations

import os
from pathlib import Path

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live.file import FileSensor
from tests.sources.live.conftest import running


def under(root: Path):  # type: ignore[no-untyped-def]
    return lambda e: e.file.path.startswith(str(root))


class TestFileSensor:
    """Created, modified, moved and deleted files, with exclusions and coalescing."""

    def test_create_modify_move_delete(self, tmp_path: Path) -> None:
        with running(FileSensor([str(tmp_path)])) as seen:
            target = tmp_path / "sub" / "notes.txt"
            target.parent.mkdir()
            # inotify watches a new folder only once it has seen it created: until then, a
            # write inside it is reported as the file's creation alone (a known race).
            seen.wait_for(lambda e: e.file.path == str(target.parent), timeout=5)
            seen.wait_for(lambda e: False, timeout=0.2)
            target.write_text("one")
            seen.wait_for(lambda e: e.file.action == FileEvent.MODIFIED, timeout=5)
            moved = tmp_path / "sub" / "renamed.txt"
            target.rename(moved)
            moved.unlink()
            events = seen.wait_for(
                lambda e: e.file.action == FileEvent.DELETED and e.file.path == str(moved),
                timeout=5,
            )
            assert events
            got = [
                (e.file.action, e.file.path, e.file.dest_path, e.file.is_dir)
                for e in seen.snapshot()
            ]
        assert got == [
            (FileEvent.CREATED, str(target.parent), "", True),
            (FileEvent.CREATED, str(target), "", False),
            (FileEvent.MODIFIED, str(target), "", False),
            (FileEvent.MOVED, str(target), str(moved), False),
            (FileEvent.DELETED, str(moved), "", False),
        ]
        assert all(e.source == "sensor:file" and e.HasField("time") for e in seen.events)

    def test_modify_storm_is_coalesced(self, tmp_path: Path) -> None:
        sensor = FileSensor([str(tmp_path)], coalesce_s=30)
        log = tmp_path / "busy.log"
        with running(sensor) as seen:
            with log.open("w") as f:
                for i in range(200):
                    f.write(f"line {i}\n")
                    f.flush()
                    os.fsync(f.fileno())
            seen.wait_for(lambda e: False, timeout=0.5)
        modified = [e for e in seen.snapshot() if e.file.action == FileEvent.MODIFIED]
        assert len(modified) == 1
        # How many of the 200 reach the sensor depends on timing: the kernel itself merges an
        # identical event with one still unread. Those that do reach it are counted, not sent.
        assert sensor.counters["coalesced"] > 0

    def test_exclusions(self, tmp_path: Path) -> None:
        sensor = FileSensor([str(tmp_path)], exclude=["*.swp", f"{tmp_path}/cache/*"])
        with running(sensor) as seen:
            (tmp_path / "cache").mkdir()
            (tmp_path / "cache" / "blob").write_bytes(b"x")
            (tmp_path / ".notes.swp").write_bytes(b"x")
            (tmp_path / "kept").write_bytes(b"x")
            seen.wait_for(lambda e: e.file.path.endswith("kept"), timeout=5)
            seen.wait_for(lambda e: False, timeout=0.3)
        paths = {e.file.path for e in seen.snapshot()}
        assert paths == {str(tmp_path / "cache"), str(tmp_path / "kept")}
        assert sensor.counters["excluded"] >= 2

    def test_missing_path_is_reported_not_fatal(self, tmp_path: Path) -> None:
        sensor = FileSensor([str(tmp_path / "nope"), str(tmp_path)])
        with running(sensor) as seen:
            (tmp_path / "a").write_bytes(b"x")
            assert seen.wait_for(lambda e: isinstance(e, Event) and e.file.path.endswith("/a"))
        assert sensor.counters["missing_paths"] == 1

    def test_watched_folder_removed_while_running(self, tmp_path: Path) -> None:
        watched = tmp_path / "w"
        watched.mkdir()
        sensor = FileSensor([str(watched), str(tmp_path)])
        with running(sensor) as seen:
            (watched / "f").write_bytes(b"x")
            (watched / "f").unlink()
            watched.rmdir()
            (tmp_path / "after").write_bytes(b"x")
            assert seen.wait_for(lambda e: e.file.path == str(tmp_path / "after"))
