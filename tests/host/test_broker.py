"""The file broker: a worker reads what its manifest grants, through the host, and nothing else."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent_host.host.broker import FileBroker
from agent_host.testing import file_event, run_plugin
from tests.helpers import make_plugin


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    folder = tmp_path / "granted"
    folder.mkdir()
    (folder / "report.txt").write_text("in the grant")
    (tmp_path / "secret.txt").write_text("outside it")
    return folder


def refusal(broker: FileBroker, path: Path) -> int:
    with pytest.raises(PermissionError) as refused:
        broker.open(str(path))
    return refused.value.errno or 0


class TestWhatItOpens:
    def test_a_granted_file_opens_read_only(self, granted: Path) -> None:
        broker = FileBroker([str(granted)])
        fd = broker.open(str(granted / "report.txt"))
        try:
            assert os.read(fd, 100) == b"in the grant"
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.write(fd, b"x")
        finally:
            os.close(fd)
            broker.close()

    def test_outside_the_grant_is_refused_even_through_a_link_or_dots(
        self, granted: Path, tmp_path: Path
    ) -> None:
        (granted / "link").symlink_to(tmp_path / "secret.txt")
        broker = FileBroker([str(granted)])
        assert refusal(broker, tmp_path / "secret.txt") == errno.EACCES
        assert refusal(broker, granted / "link") == errno.EACCES
        assert refusal(broker, granted / ".." / "secret.txt") == errno.EACCES
        broker.close()

    def test_a_folder_whose_name_starts_like_the_grant_is_not_in_it(
        self, granted: Path, tmp_path: Path
    ) -> None:
        """granted2/ is not below granted/: folders are compared whole, not as text."""
        (tmp_path / "granted2").mkdir()
        (tmp_path / "granted2" / "x.txt").write_text("a neighbour")
        (granted / "deep" / "er").mkdir(parents=True)
        (granted / "deep" / "er" / "y.txt").write_text("deep in the grant")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "z.txt").write_text("in the second grant")
        broker = FileBroker([str(granted), str(tmp_path / "granted" / ".." / "other")])
        assert refusal(broker, tmp_path / "granted2" / "x.txt") == errno.EACCES
        os.close(broker.open(str(granted / "deep" / "er" / "y.txt")))
        os.close(broker.open(str(tmp_path / "other" / "z.txt")))  # a grant is resolved too
        assert not broker.granted("/") and not broker.granted(str(granted) + "2")
        broker.close()

    def test_no_fifo_device_or_folder_which_could_block_or_act(self, granted: Path) -> None:
        os.mkfifo(granted / "fifo")  # opening it for reading would block the host
        broker = FileBroker([str(granted), "/dev"])
        for path in (granted / "fifo", Path("/dev/zero"), granted):
            assert refusal(broker, path) == errno.EACCES
        broker.close()


READER = """\
from agent_host.sdk import Finding, Plugin, open_file

class Detector(Plugin):
    def on_event(self, event):
        try:
            with open_file(event.file.path) as f:
                return Finding(rule="read", severity="info", message=f.read().decode())
        except OSError as exc:
            return Finding(rule="refused", severity="info", message=str(exc.errno))
"""


class TestInAWorker:
    def test_the_worker_reads_a_file_its_user_may_not(self, granted: Path, tmp_path: Path) -> None:
        (granted / "report.txt").chmod(0o600)  # root's alone
        plugin = make_plugin(
            tmp_path / "plugins",
            "reader",
            READER,
            subscribe=("file",),
            extra_toml=f'[permissions]\nread = ["{granted}"]\n',
        )
        events = [
            file_event(str(granted / "report.txt"), "MODIFIED"),
            file_event(str(tmp_path / "secret.txt"), "MODIFIED"),
            file_event("/etc/shadow", "MODIFIED"),
        ]
        run = run_plugin(plugin, events)
        assert [(f.rule, f.message) for f in run.findings] == [
            ("read", "in the grant"),
            ("refused", str(errno.EACCES)),
            ("refused", str(errno.EACCES)),
        ]
