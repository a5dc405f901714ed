"""The process sensor on real processes."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from agent_host.protocol import Event, ProcessEvent
from agent_host.sources.live.process import (
    NetlinkProcessSensor,
    PollingProcessSensor,
    describe,
)
from tests.sources.live.conftest import running

needs_netlink = pytest.mark.skipif(
    not NetlinkProcessSensor.available(), reason="netlink process events need CAP_NET_ADMIN"
)


def starts(pids: set[int]) -> Callable[[Event], bool]:
    return lambda e: e.process.action == ProcessEvent.START and e.process.pid in pids


class TestNetlink:
    """Exec and exit events straight from the kernel, enriched from /proc."""

    @needs_netlink
    def test_sees_short_lived_processes(self) -> None:
        with running(NetlinkProcessSensor()) as seen:
            pids = set()
            for _ in range(100):
                proc = subprocess.Popen(["sh", "-c", "true"])
                proc.wait()
                pids.add(proc.pid)
            caught = seen.wait_for(starts(pids), count=100, timeout=10)
        caught_pids = {e.process.pid for e in caught}
        print(f"short-lived processes caught: {len(caught_pids)}/100")
        assert len(caught_pids) >= 95

    @needs_netlink
    def test_exec_event_fields(self, tmp_path: Path) -> None:
        binary = tmp_path / "copied-sleep"
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
        with running(NetlinkProcessSensor()) as seen:
            proc = subprocess.Popen([str(binary), "0.3"], cwd=tmp_path)
            proc.wait()
            started = seen.wait_for(starts({proc.pid}))
            exited = seen.wait_for(
                lambda e: e.process.action == ProcessEvent.EXIT and e.process.pid == proc.pid
            )
        p = started[0].process
        assert (p.exe, list(p.cmdline), p.cwd) == (str(binary), [str(binary), "0.3"], str(tmp_path))
        assert (p.ppid, p.parent_exe) == (os.getpid(), os.path.realpath(sys.executable))
        assert list(p.parent_cmdline) == psutil.Process().cmdline()
        assert (p.uid, p.user) == (os.getuid(), pwd.getpwuid(os.getuid()).pw_name)
        assert started[0].source == "sensor:process"
        assert started[0].HasField("time")
        assert (exited[0].process.exe, exited[0].process.exit_code) == (str(binary), 0)

    @needs_netlink
    def test_exit_code_and_signal(self) -> None:
        with running(NetlinkProcessSensor()) as seen:
            failing = subprocess.Popen(["sh", "-c", "exit 3"])
            failing.wait()
            killed = subprocess.Popen(["sleep", "30"])
            killed.kill()
            killed.wait()
            exits = seen.wait_for(
                lambda e: (
                    e.process.action == ProcessEvent.EXIT
                    and e.process.pid in (failing.pid, killed.pid)
                ),
                count=2,
            )
        codes = {e.process.pid: e.process.exit_code for e in exits}
        assert codes == {failing.pid: 3, killed.pid: -9}


class TestPolling:
    """Without privileges: a diff of the process table, with the same fields."""

    def test_sees_a_process_that_lives_long_enough(self, tmp_path: Path) -> None:
        with running(PollingProcessSensor(interval_s=0.05)) as seen:
            proc = subprocess.Popen(["sleep", "0.5"], cwd=tmp_path)
            started = seen.wait_for(starts({proc.pid}))
            proc.wait()
            exited = seen.wait_for(
                lambda e: e.process.action == ProcessEvent.EXIT and e.process.pid == proc.pid
            )
        assert started[0].process.cmdline == ["sleep", "0.5"]
        assert started[0].process.cwd == str(tmp_path)
        assert started[0].process.ppid == os.getpid()
        assert exited


class TestEnrichment:
    """A process gone before /proc is read still gives an event, never an exception."""

    def test_vanished_process(self) -> None:
        proc = subprocess.Popen(["true"])
        proc.wait()
        process = describe(proc.pid, parent=os.getpid())
        assert process.pid == proc.pid
        assert process.ppid == os.getpid()
        assert process.exe == ""
        assert Event(process=process).WhichOneof("kind") == "process"
