"""The file sensor on real file activity."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent_host.protocol import Event, FileEvent
from agent_host.sources.live import audit, file_sensor
from agent_host.sources.live.execs import ExecTable
from agent_host.sources.live.fanotify_sensor import FanotifySensor, fanotify_unavailable
from agent_host.sources.live.inotify_sensor import InotifySensor
from agent_host.sources.live.syscalls import SyscallSensor
from tests.sources.live.conftest import running


def under(root: Path):  # type: ignore[no-untyped-def]
    return lambda e: e.file.path.startswith(str(root))


class TestInotifySensor:
    """Created, modified, moved and deleted files, with exclusions and coalescing."""

    def test_create_modify_move_delete(self, tmp_path: Path) -> None:
        with running(InotifySensor([str(tmp_path)])) as seen:
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
        sensor = InotifySensor([str(tmp_path)], coalesce_s=30)
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
        sensor = InotifySensor([str(tmp_path)], exclude=["*.swp", f"{tmp_path}/cache/*"])
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
        sensor = InotifySensor([str(tmp_path / "nope"), str(tmp_path)])
        with running(sensor) as seen:
            (tmp_path / "a").write_bytes(b"x")
            assert seen.wait_for(lambda e: isinstance(e, Event) and e.file.path.endswith("/a"))
        assert sensor.counters["missing_paths"] == 1

    def test_watched_folder_removed_while_running(self, tmp_path: Path) -> None:
        watched = tmp_path / "w"
        watched.mkdir()
        sensor = InotifySensor([str(watched), str(tmp_path)])
        with running(sensor) as seen:
            (watched / "f").write_bytes(b"x")
            (watched / "f").unlink()
            watched.rmdir()
            (tmp_path / "after").write_bytes(b"x")
            assert seen.wait_for(lambda e: e.file.path == str(tmp_path / "after"))


needs_fanotify = pytest.mark.skipif(
    fanotify_unavailable() is not None or bool(audit.unavailable()),
    reason=f"fanotify: {fanotify_unavailable()}; audit: {audit.unavailable()}",
)


@needs_fanotify
class TestFanotifySensor:
    """As root: every change on the filesystem under the watched folders, with who made it."""

    def test_changes_carry_the_writer_and_attributes_are_their_own_action(
        self, tmp_path: Path
    ) -> None:
        target = tmp_path / "new" / "tool"
        script = (
            f"mkdir {target.parent} && echo x > {target} && chmod u+s,+x {target} && sleep 0.5 && "
            f"mv {target} {target}.2 && rm {target}.2"
        )
        # mkdir, chmod and rm exit before their change is read: the execs the syscall sensor
        # saw name them.
        execs = ExecTable()
        syscalls = SyscallSensor(process=True, execs=execs)
        with running(syscalls), running(FanotifySensor([str(tmp_path)], execs=execs)) as seen:
            writer = subprocess.Popen(["sh", "-c", f"sleep 0.3; {script}; sleep 0.5"])
            seen.wait_for(lambda e: e.file.action == FileEvent.DELETED, timeout=10)
            writer.wait()
        got = [(e.file.action, e.file.path, e.file.dest_path) for e in seen.snapshot()]
        assert got == [
            (FileEvent.CREATED, str(target.parent), ""),
            (FileEvent.CREATED, str(target), ""),
            (FileEvent.MODIFIED, str(target), ""),
            (FileEvent.ATTRIBUTES, str(target), ""),
            (FileEvent.MOVED, str(target), f"{target}.2"),
            (FileEvent.DELETED, f"{target}.2", ""),
        ]
        events = [e.file for e in seen.snapshot()]
        # The mode is read when the change is reported: the file still has it half a second on.
        assert events[3].mode & stat.S_ISUID  # the chmod u+s
        assert [e.is_dir for e in events] == [True, False, False, False, False, False]
        for event in seen.snapshot():
            assert event.file.origin == "fanotify"
            assert event.file.pid not in (0, os.getpid())
            assert event.file.uid == os.geteuid()
        # Which programs made them: mkdir, the shell (its redirection), chmod, mv, rm.
        exes = [os.path.basename(e.file.exe) for e in seen.snapshot()]
        assert exes[0] == "mkdir" and exes[3] == "chmod" and exes[5] == "rm", exes

    def test_a_storm_of_files_in_new_folders_is_seen_whole(self, tmp_path: Path) -> None:
        # Where inotify must first see a folder created before it can watch it, a filesystem
        # mark sees everything at once; and the readers of a busy folder cost nothing.
        sensor = FanotifySensor([str(tmp_path)])
        storm = (
            "import pathlib, sys\n"
            "for d in range(50):\n"
            "    folder = pathlib.Path(sys.argv[1], f'd{d}')\n"
            "    folder.mkdir()\n"
            "    for f in range(100):\n"
            "        (folder / f'f{f}').write_bytes(b'x')\n"
            "        (folder / f'f{f}').read_bytes()\n"
        )
        with running(sensor) as seen:
            subprocess.run([sys.executable, "-c", storm, str(tmp_path)], check=True)
            created = seen.wait_for(
                lambda e: e.file.action == FileEvent.CREATED and not e.file.is_dir,
                count=5000,
                timeout=30,
            )
        assert len(created) == 5000
        assert sensor.counters["overflows"] == 0

    def test_only_the_watched_folders_and_not_the_hosts_own_writes(self, tmp_path: Path) -> None:
        watched, elsewhere = tmp_path / "watched", tmp_path / "elsewhere"
        watched.mkdir()
        elsewhere.mkdir()
        sensor = FanotifySensor([str(watched)], exclude=["*.swp"])
        with running(sensor) as seen:
            (watched / "mine").write_bytes(b"x")  # this process is the host: left out
            subprocess.run(
                ["sh", "-c", f"touch {elsewhere}/a {watched}/b.swp {watched}/c"], check=True
            )
            seen.wait_for(lambda e: e.file.path.endswith("/c"), timeout=10)
        assert {e.file.path for e in seen.snapshot()} == {str(watched / "c")}
        assert sensor.counters["own"] >= 1 and sensor.counters["excluded"] >= 1

    def test_file_sensor_chooses_fanotify_as_root(self) -> None:
        assert isinstance(file_sensor(["/tmp"]), FanotifySensor)
