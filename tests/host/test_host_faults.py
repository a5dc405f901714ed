"""The host's own faults are the host's: a damaged state database, socket folders of dead
hosts, a full disk under the findings file, a state folder gone read-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import CollectingSink, JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.runtime import remove_stale_runtime_dirs
from agent_host.host.store import DB_NAME, StateStore
from agent_host.host.supervisor import Supervisor
from benchmarks.common import HERE as BENCHMARKS
from tests.helpers import agent_host, exec_event, make_plugin, recording


class TestStateDatabase:
    """A damaged database is named, set aside, and the host starts afresh."""

    def test_damaged_database_is_set_aside(self, tmp_path: Path) -> None:
        (tmp_path / DB_NAME).write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
        with structlog.testing.capture_logs() as logs:
            store = StateStore(tmp_path)
        store.quarantine("p", "1", "r", level=1, retry_in_s=60)
        assert set(store.quarantined()) == {("p", "1")}
        store.close()
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1
        (event,) = [e for e in logs if e["event"].startswith("state database is damaged")]
        assert event["path"] == str(tmp_path / DB_NAME)
        assert event["moved_to"].endswith(aside[0])

    def test_garbage_in_its_last_page_is_found_at_start(self, tmp_path: Path) -> None:
        store = StateStore(tmp_path)
        for i in range(300):  # a few pages of history; the first read touches none of them
            store.record("p", "1", "sha256:00", "started", "x" * 200 + str(i))
        store.close()
        path = tmp_path / DB_NAME
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.seek(size - 4096)
            f.write(b"\xff" * 4096)
        with structlog.testing.capture_logs() as logs:
            store = StateStore(tmp_path)
        store.record("p", "1", "sha256:00", "started")  # writes work again
        store.close()
        (event,) = [e for e in logs if e["event"].startswith("state database is damaged")]
        assert event["moved_to"].split(".corrupt-")[0] == str(path)

    def test_an_empty_database_is_said_not_silently_forgotten(self, tmp_path: Path) -> None:
        (tmp_path / DB_NAME).write_bytes(b"")  # cut to nothing: its quarantines are gone
        with structlog.testing.capture_logs() as logs:
            StateStore(tmp_path).close()
        (event,) = [e for e in logs if e["event"].startswith("state database is empty")]
        assert event["log_level"] == "error"
        assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]

    def test_an_unwritable_folder_is_not_taken_for_damage(self, tmp_path: Path) -> None:
        (tmp_path / DB_NAME).mkdir()  # a folder where the file should be
        with pytest.raises(Exception, match="unable to open database file"):
            StateStore(tmp_path)
        assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_socket_folders_of_dead_hosts_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "agent-host-999999999-abc"
    mine = tmp_path / f"agent-host-{os.getpid()}-def"
    for folder in (dead, mine):
        folder.mkdir()
        (folder / "host.sock").touch()
    assert remove_stale_runtime_dirs(tmp_path) == [dead]
    assert mine.is_dir()
    assert not dead.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_leaves_whole_lines_and_blames_no_plugin(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("tmpfs could not be mounted")
    try:
        findings = small / "findings.jsonl"

        async def scenario() -> Supervisor:
            echo = Manifest.load(BENCHMARKS / "plugins" / "echo" / "plugin.toml")
            sup = Supervisor(
                HostConfig(state_dir=None, batch_size=50), [echo], JsonLinesSink(findings, None)
            )
            await sup.start()
            for i in range(1, 2001):
                await sup.publish(exec_event(f"/usr/bin/tool{i}", pid=i))
            await sup.stop()
            sup.findings.close()
            return sup

        sup = asyncio.run(scenario())
        lines = findings.read_bytes().split(b"\n")
        assert lines[-1] == b""  # ends with a whole line
        parsed = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
        assert len(parsed) == sup.findings.written > 0
        assert sup.findings.lost > 0
        assert sup.findings.written + sup.findings.lost == 2000
        runner = sup.plugins["echo"]
        assert (dict(runner.stats.restarts), runner.stats.processed) == ({}, 2000)
    finally:
        subprocess.run(["umount", str(small)], check=False)


CRASHES = """\
import os
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        os._exit(3)
"""


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` as a read-only bind mount of itself (a disk remounted read-only), undone on
    leaving; the test is skipped where the mount cannot be made."""
    for command in (
        ["mount", "--bind", str(folder), str(folder)],
        ["mount", "-o", "remount,bind,ro", str(folder)],
    ):
        if subprocess.run(command).returncode:
            subprocess.run(["umount", str(folder)], check=False)
            pytest.skip("a read-only bind mount could not be made")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_read_only_state_folder_is_the_hosts_fault(tmp_path: Path) -> None:
    """The state database opens (it exists) but cannot be written: the quarantine of a
    crash-looping plugin is not persisted, the host says so and counts it, the plugin is
    quarantined all the same, and the host still stops when asked."""
    state = tmp_path / "state"
    StateStore(state).close()
    with read_only(state):
        folder = make_plugin(tmp_path / "plugins", "crasher", CRASHES)
        policy = RestartPolicy(backoff_s=0.01, burst=3, stable_after_s=60)

        async def scenario() -> Supervisor:
            config = HostConfig(state_dir=state, batch_size=1, poison_min_letters=1)
            sup = Supervisor(
                config, [Manifest.load(folder / "plugin.toml")], CollectingSink(), policy
            )
            await sup.start()
            runner = sup.plugins["crasher"]
            for i in range(1, 200):
                await sup.publish(exec_event("/usr/bin/id", pid=i))
                if runner.phase is Phase.QUARANTINED:
                    break
                await asyncio.sleep(0.02)
            await asyncio.wait_for(sup.stop(), 30)  # stoppable, whatever failed to be written
            return sup

        with structlog.testing.capture_logs() as logs:
            sup = asyncio.run(scenario())
        runner = sup.plugins["crasher"]
        assert runner.phase is Phase.QUARANTINED
        assert runner.stats.state_errors > 0
        errors = [e for e in logs if e["event"] == "could not write state"]
        assert errors and all("readonly" in e["error"] for e in errors)


def test_a_failed_host_task_is_said_and_raises_the_flag() -> None:
    """A task of the host's own that dies is logged with why, and the host is told to stop."""

    async def scenario() -> Supervisor:
        sup = Supervisor(HostConfig(state_dir=None), [], CollectingSink())

        async def broken() -> None:
            await asyncio.sleep(0)
            raise ValueError("a host bug")

        sup._keep(broken(), "probe")
        await asyncio.wait_for(sup.failed.wait(), 10)
        await sup.stop()
        return sup

    with structlog.testing.capture_logs() as logs:
        sup = asyncio.run(scenario())
    assert sup.failure == "host task probe failed: ValueError: a host bug"
    (said,) = [e for e in logs if e["event"] == "host task failed; the host must stop"]
    assert said["task"] == "probe"


POISONED = """\
import os
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        if event.process.pid == 5:
            os._exit(3)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_dead_letters_that_could_not_be_kept_are_not_pointed_to(tmp_path: Path) -> None:
    """A replay whose state folder is read-only: the poison event is isolated all the same,
    and the summary says it could not be kept, not "see: agent-host deadletters" (which would
    show nothing)."""
    state = tmp_path / "state"
    StateStore(state).close()
    with read_only(state):
        make_plugin(tmp_path / "plugins", "poisoned", POISONED)
        recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/id", pid=i) for i in range(1, 11)])
        run = agent_host(
            ["replay", "rec.jsonl", "--plugins", "plugins", "--state-dir", str(state)], tmp_path
        )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.plugin("poisoned")["dead_lettered"] == 1
    assert run.plugin("poisoned")["processed"] == 9
    assert "1 dead-lettered events could not be kept: the state folder" in run.stdout
    assert "see: agent-host deadletters" not in run.stdout
