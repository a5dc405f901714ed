"""The attack suite: malicious plugins run by the real host beside an honest one (tally), each
judged from outside the plugin: the host alive and its accounting exact, the honest plugin's
events all processed, no file changed, no process left, no packet received.

As root only: the sandbox's layers need it (elsewhere the host runs with a warning per layer,
which tests/worker/test_sandbox.py and the host's own tests cover).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import site
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Finding
from tests.helpers import TEST_PLUGINS, exec_event, make_plugin, processes_of, read_findings
from tests.security import attacks

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the sandbox's namespaces, identities and cgroups need root"
)

EVENTS = 300


@dataclass
class Contest:
    sup: Supervisor
    findings: list[Finding]
    #: Processes of the attacker's user seen while it ran, and after the host stopped.
    attacker_processes: list[int]
    left_behind: list[int]

    @property
    def attacker(self) -> list[Finding]:
        return [f for f in self.findings if f.plugin == "attacker"]

    def assert_honest_plugin_unharmed(self) -> None:
        tally = self.sup.plugins["tally"]
        assert tally.phase is Phase.STOPPED
        assert dict(tally.stats.restarts) == {}, "the honest plugin's worker was harmed"
        (count,) = [f for f in self.findings if f.plugin == "tally"]
        assert count.attributes["events"] == count.attributes["distinct"] == str(EVENTS)
        assert count.attributes["duplicates"] == "0"
        assert self.sup.accepted == EVENTS
        assert self.left_behind == [], "a process of the attacker outlived the host"


def contest(
    tmp_path: Path,
    code: str,
    *,
    config: str = "",
    limits: str = "",
    policy: RestartPolicy | None = None,
    zygote: bool = True,
) -> Contest:
    plugins = tmp_path / "plugins"
    shutil.copytree(TEST_PLUGINS / "tally", plugins / "tally")
    attacker = make_plugin(
        plugins, "attacker", code, extra_toml=f"[limits]\n{limits}\n[config]\n{config}\n"
    )
    manifests = [Manifest.load(plugins / n / "plugin.toml") for n in ("tally", "attacker")]
    del attacker
    findings_path = tmp_path / "findings.jsonl"
    seen: list[int] = []

    async def scenario() -> Supervisor:
        sink = JsonLinesSink(findings_path, None)
        sup = Supervisor(
            HostConfig(state_dir=tmp_path / "state", zygote=zygote),
            manifests,
            sink,
            policy or RestartPolicy(backoff_s=0.01),
        )
        await sup.start()
        for i in range(1, EVENTS + 1):
            await sup.publish(exec_event(f"/usr/bin/e{i}", pid=i))
            if i % 50 == 0:
                await asyncio.sleep(0.05)  # let the attacker act while events still flow
        await sup.drain()
        seen.extend(processes_of(sup.plugins["attacker"].sandbox.uid))
        await sup.stop()
        sup.findings.close()
        return sup

    sup = asyncio.run(scenario())
    uid = sup.plugins["attacker"].sandbox.uid
    deadline = time.monotonic() + 10
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Contest(sup, read_findings(findings_path), seen, processes_of(uid))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def listeners() -> Iterator[tuple[int, int, list[str]]]:
    """A TCP and a UDP listener on 127.0.0.1; the list gets what reached either."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    udp.settimeout(0.2)
    reached: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                tcp.accept()[0].close()
                reached.append("tcp")
            except OSError:
                pass
            try:
                udp.recvfrom(64)
                reached.append("udp")
            except OSError:
                pass

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield tcp.getsockname()[1], udp.getsockname()[1], reached
    stop.set()
    thread.join()
    tcp.close()
    udp.close()


def mounts() -> list[str]:
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())


class TestQuietAttacks:
    """Reads, writes, signals, sessions, sockets and programs: each refused, none noticed by
    anyone but the attacker."""

    @pytest.mark.parametrize("zygote", [True, False], ids=["forked", "exec'd"])
    def test_every_way_out_is_closed(
        self, tmp_path: Path, listeners: tuple[int, int, list[str]], zygote: bool
    ) -> None:
        tcp_port, udp_port, reached = listeners
        # Wide open to everyone on the host's side: only the sandbox stands in the way.
        tmp_path.chmod(0o777)
        state = tmp_path / "state"
        state.mkdir(mode=0o777)
        state.chmod(0o777)
        findings = tmp_path / "findings.jsonl"
        findings.touch(mode=0o666)
        sibling = tmp_path / "plugins" / "tally" / "tally.py"
        sibling_before = digest(TEST_PLUGINS / "tally" / "tally.py")
        mounts_before = mounts()
        config = f"""\
            host_pid = {os.getpid()}
            state_db = "{state / "state.sqlite3"}"
            findings = "{findings}"
            sibling_code = "{sibling}"
            tcp_port = {tcp_port}
            udp_port = {udp_port}
            """
        run = contest(tmp_path, attacks.PROBER, config=config, zygote=zygote)

        run.assert_honest_plugin_unharmed()
        outcomes = dict(f.rule.split(":", 1)[::-1] for f in run.attacker)
        assert len(outcomes) == 23, sorted(outcomes)
        breaches = {f.rule: f.message for f in run.attacker if f.rule.startswith("breach:")}
        assert breaches == {}
        # ... and judged from outside as well.
        assert digest(sibling) == sibling_before
        assert "forged by the prober" not in findings.read_text()
        for db in state.glob("*"):
            assert b"forged by the prober" not in db.read_bytes()
        assert not Path("/etc/agent-host-pwned").exists()
        assert not any(
            (Path(folder) / "agent_host_pwned.pth").exists() for folder in site.getsitepackages()
        )
        assert mounts() == mounts_before
        assert reached == []
        assert run.sup.refused_sessions == 0
        assert run.sup.plugins["attacker"].phase is Phase.STOPPED


class TestDestructiveAttacks:
    """(Memory hidden in a memfd is counted and killed: tests/host/test_cgroups.py.)"""

    def test_kill_everything_in_reach(self, tmp_path: Path) -> None:
        run = contest(tmp_path, attacks.KILL_ALL)
        run.assert_honest_plugin_unharmed()
        attacker = run.sup.plugins["attacker"]
        # kill(-1) reaches every process the caller may signal but itself and its namespace's
        # init: here, none (ESRCH, on every event).
        assert dict(attacker.stats.restarts) == {}
        assert attacker.stats.errors == EVENTS

    def test_a_setsid_daemon_does_not_outlive_its_worker(self, tmp_path: Path) -> None:
        run = contest(tmp_path, attacks.DAEMON)
        assert [f.rule for f in run.attacker] == ["daemon started"]
        assert len(run.attacker_processes) >= 2  # the worker and its daemon
        run.assert_honest_plugin_unharmed()

    @pytest.mark.slow  # 8 s: run after the test command by .ci/run
    def test_a_fork_bomb_is_stopped_at_its_limit(self, tmp_path: Path) -> None:
        run = contest(tmp_path, attacks.FORK_BOMB, limits="processes = 16\nbatch_deadline_s = 1.0")
        run.assert_honest_plugin_unharmed()
        attacker = run.sup.plugins["attacker"]
        assert set(attacker.stats.restarts) <= {"processes", "hang"}
        assert attacker.stats.restarts
        # Its processes never went far past its limit (the pids cgroup held them).
        assert len(run.attacker_processes) <= 16 + 128

    def test_its_scratch_space_is_capped(self, tmp_path: Path) -> None:
        free_before = shutil.disk_usage("/tmp").free
        run = contest(tmp_path, attacks.FILL_TMP)
        run.assert_honest_plugin_unharmed()
        (finding,) = run.attacker
        assert finding.rule == "contained:fill /tmp"
        assert int(finding.message.split()[0]) <= HostConfig().scratch_mb
        assert shutil.disk_usage("/tmp").free > free_before - (HostConfig().scratch_mb << 20)
