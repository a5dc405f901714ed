"""The syscall sensor on real activity: execs described from their audit records, however short
the process, and IP connects, accepts and binds one event each."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_host.protocol import Event, NetworkEvent, ProcessEvent
from agent_host.sources.live import audit
from agent_host.sources.live.syscalls import SyscallSensor
from tests.helpers import named_connection
from tests.sources.live.conftest import running

UNAVAILABLE = audit.unavailable()
pytestmark = [
    pytest.mark.skipif(bool(UNAVAILABLE), reason=f"audit: {UNAVAILABLE}"),
    pytest.mark.usefixtures("audit_lock"),
]
TRUE = shutil.which("true") or "/bin/true"


def execs(matches: Callable[[ProcessEvent], bool]) -> Callable[[Event], bool]:
    return lambda e: (
        e.HasField("process") and e.process.action == ProcessEvent.START and matches(e.process)
    )


def test_a_storm_of_short_processes_each_with_exe_and_full_argv(tmp_path: Path) -> None:
    # One shell starts them as fast as it can: each lives well under a millisecond of its own.
    count = 1000
    script = f'i=0; while [ $i -lt {count} ]; do {TRUE} storm "$i" "a b"; i=$((i+1)); done'
    with running(SyscallSensor()) as seen:
        subprocess.run(["sh", "-c", script], check=True)
        caught = seen.wait_for(
            execs(lambda p: p.cmdline[:1] == [TRUE] and p.cmdline[1:2] == ["storm"]),
            count=count,
        )
    complete = {
        p.cmdline[2]
        for p in (e.process for e in caught)
        if p.exe == os.path.realpath(TRUE) and list(p.cmdline[3:]) == ["a b"] and p.cwd
    }
    print(f"execs seen with exe and full argv: {len(complete)}/{count}")
    assert len(complete) >= count * 0.99


def test_uids_name_script_cwd_and_parent(tmp_path: Path) -> None:
    script = tmp_path / "run me.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    setuid = tmp_path / "ident"
    shutil.copy(shutil.which("id") or "/usr/bin/id", setuid)
    os.chown(setuid, 65534, 65534)
    setuid.chmod(0o4755)  # runs as nobody, whoever starts it
    with running(SyscallSensor()) as seen:
        subprocess.run([str(script), "arg"], cwd=tmp_path, check=True)
        subprocess.run([str(setuid)], cwd=tmp_path, check=True, capture_output=True)
        # The login uid, once set, follows a session through su and sudo.
        subprocess.run(["sh", "-c", f"echo 1000 > /proc/self/loginuid && exec {TRUE} login"])
        (ran,) = seen.wait_for(execs(lambda p: p.script == str(script)))
        (raised,) = seen.wait_for(execs(lambda p: p.exe == str(setuid)))
        logged = seen.wait_for(execs(lambda p: list(p.cmdline) == [TRUE, "login"]))
    shell = ran.process
    assert shell.script == str(script) and shell.exe == os.path.realpath("/bin/sh")
    # As the kernel ran it: the interpreter, given the script.
    assert shell.cwd == str(tmp_path) and list(shell.cmdline) == ["/bin/sh", str(script), "arg"]
    assert shell.ppid == os.getpid() and shell.parent_exe == os.path.realpath(sys.executable)
    assert shell.origin == "audit" and shell.name == "run me.sh"
    assert (raised.process.uid, raised.process.euid) == (os.getuid(), 65534)
    assert raised.process.script == ""
    assert logged and logged[0].process.auid == 1000


def test_renamed_chained_and_fileless_processes_are_named_truly(tmp_path: Path) -> None:
    sleep = shutil.which("sleep") or "/bin/sleep"
    fileless = (
        "import os; fd = os.memfd_create('payload'); "
        f"os.write(fd, open({TRUE!r}, 'rb').read()); os.execve(fd, ['kworker'], {{}})"
    )
    with running(SyscallSensor()) as seen:
        subprocess.run(["bash", "-c", f"exec -a httpd {sleep} 0.01"], check=True)
        subprocess.run(["bash", "-c", f"{TRUE} first; {TRUE} second"], check=True)
        subprocess.run([sys.executable, "-c", fileless], check=True)
        (renamed,) = seen.wait_for(execs(lambda p: p.cmdline[:1] == ["httpd"]))
        chained = seen.wait_for(execs(lambda p: p.cmdline[1:2] in (["first"], ["second"])), 2)
        (memfd,) = seen.wait_for(execs(lambda p: p.cmdline[:1] == ["kworker"]))
    assert renamed.process.exe == os.path.realpath(sleep) and renamed.process.name == "sleep"
    assert sorted(e.process.cmdline[1] for e in chained) == ["first", "second"]
    assert memfd.process.exe_kind == "memfd" and "memfd:payload" in memfd.process.exe


def test_exits_still_come_for_the_processes_it_saw_start() -> None:
    with running(SyscallSensor()) as seen:
        proc = subprocess.Popen(["sh", "-c", "exit 3"])
        proc.wait()
        exited = seen.wait_for(
            lambda e: e.process.action == ProcessEvent.EXIT and e.process.pid == proc.pid
        )
    assert exited and exited[0].process.exit_code == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_each_connect_accept_and_bind_is_one_event() -> None:
    port, refused = _free_port(), _free_port()  # nothing listens on `refused`: a port scan's lot
    program = (
        "import socket\n"
        f"server = socket.socket(); server.bind(('127.0.0.1', {port})); server.listen()\n"
        f"client = socket.create_connection(('127.0.0.1', {port})); peer, _ = server.accept()\n"
        f"try: socket.create_connection(('127.0.0.1', {refused}), timeout=1)\n"
        "except OSError: pass\n"
    )
    with running(SyscallSensor(process=False, network=True)) as seen:
        done = subprocess.Popen([sys.executable, "-c", program])
        done.wait()
        events = seen.wait_for(lambda e: e.network.pid == done.pid, count=4)
    ours = sorted(
        (NetworkEvent.Action.Name(n.action), n.local_port or n.remote_port)
        for n in (e.network for e in events)
    )
    accepted = [e.network for e in events if e.network.action == NetworkEvent.ACCEPT]
    assert ("LISTEN", port) in ours and ("CONNECT", refused) in ours
    assert [p for p in ours if p == ("CONNECT", port)] == [("CONNECT", port)]  # once
    assert len(accepted) == 1 and accepted[0].remote_address == "127.0.0.1"
    assert all(e.network.origin == "audit" and e.network.exe for e in events)


def test_a_connection_names_the_host_its_address_was_looked_up_as() -> None:
    # A DNS server of the test's on loopback port 53 answers "pool.example.org" with
    # 127.0.0.7; a process looks the name up there and connects to the answer.
    with running(SyscallSensor(process=False, network=True)) as seen:
        port = named_connection("pool.example.org", "127.0.0.7")
        (connect,) = seen.wait_for(
            lambda e: e.network.action == NetworkEvent.CONNECT and e.network.remote_port == port
        )
    assert connect.network.remote_address == "127.0.0.7"
    assert connect.network.remote_hostname == "pool.example.org"


def test_the_kernel_is_left_as_it_was() -> None:
    before = _status()
    with running(SyscallSensor(network=True)):
        during = _status()
    after = _status()
    assert during["pid"] == os.getpid() or during["pid"] == before["pid"]
    assert (after["enabled"], after["pid"]) == (before["enabled"], before["pid"])


def _status() -> dict[str, int]:
    fields = audit.kernel_status()
    return {"enabled": fields[1], "pid": fields[3]}
