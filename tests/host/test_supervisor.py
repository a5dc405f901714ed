"""The supervisor with real worker processes: authentication, and surviving a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import structlog

from agent_host.host.config import HostConfig
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Hello, LogRecord, WorkerMessage, WorkerSessionStub
from tests.helpers import TEST_PLUGINS, exec_event, read_findings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def manifests(*names: str) -> list[Manifest]:
    return [Manifest.load(TEST_PLUGINS / n / "plugin.toml") for n in names]


class TestAuthentication:
    """Only a worker holding its spawn's secret gets a session; the socket is private."""

    @pytest.mark.parametrize(
        "first_message",
        ["wrong secret for a real worker id", "unknown worker id", "no hello at all"],
    )
    def test_session_without_the_secret_is_refused(
        self, tmp_path: Path, first_message: str
    ) -> None:
        async def scenario() -> None:
            sup = Supervisor(
                HostConfig(), manifests("tally"), JsonLinesSink(tmp_path / "f.jsonl", None)
            )
            await sup.start()
            handle = sup.plugins["tally"]
            session_dir = handle.sandbox.socket_path.parent
            runtime_dir = session_dir.parent
            assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o711
            assert stat.S_IMODE(session_dir.stat().st_mode) == 0o700
            if os.geteuid() == 0:
                assert session_dir.stat().st_uid == handle.sandbox.uid
            assert stat.S_IMODE(handle.sandbox.socket_path.stat().st_mode) == 0o600
            message = {
                "wrong secret for a real worker id": WorkerMessage(
                    hello=Hello(worker_id=handle.worker.child.worker_id, token=os.urandom(32))
                ),
                "unknown worker id": WorkerMessage(
                    hello=Hello(worker_id="x" * 32, token=os.urandom(32))
                ),
                "no hello at all": WorkerMessage(log=LogRecord(message="let me in")),
            }[first_message]
            async with grpc.aio.insecure_channel(f"unix:{handle.sandbox.socket_path}") as channel:
                call = WorkerSessionStub(channel).Session()
                await call.write(message)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call.read()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The real worker is untouched and still serves.
            for i in range(100):
                await sup.publish(exec_event(f"/usr/bin/e{i}"))
            await sup.stop()
            sup.findings.close()
            assert sup.refused_sessions == 1
            assert handle.stats.processed == 100
            assert handle.phase is Phase.STOPPED
            assert not runtime_dir.exists()

        run(scenario())


class TestWorkerDeath:
    """A worker killed with SIGKILL: the host logs it, keeps running, and loses nothing."""

    def test_sigkill_one_worker_others_complete(self, tmp_path: Path) -> None:
        findings_path = tmp_path / "f.jsonl"

        async def scenario() -> Supervisor:
            sup = Supervisor(
                HostConfig(batch_size=16),
                manifests("exec_from_tmp", "tally"),
                JsonLinesSink(findings_path, None),
            )
            await sup.start()
            victim = sup.plugins["exec_from_tmp"]
            first_pid = victim.pid
            assert first_pid is not None
            for i in range(1, 3001):
                await sup.publish(exec_event("/tmp/x" if i % 10 == 0 else "/usr/bin/y", pid=i))
                if i == 1500:
                    os.killpg(first_pid, signal.SIGKILL)
                if i % 100 == 0:
                    await asyncio.sleep(0.005)
            await sup.stop()
            sup.findings.close()
            assert victim.pid != first_pid
            return sup

        with structlog.testing.capture_logs() as logs:
            sup = run(scenario())

        died = [e for e in logs if e["event"] == "worker died"]
        assert [(e["plugin"], e["cause"]) for e in died] == [("exec_from_tmp", "signal SIGKILL")]
        findings = read_findings(findings_path)
        tally = next(f for f in findings if f.plugin == "tally")
        assert tally.attributes["events"] == tally.attributes["distinct"] == "3000"
        assert tally.attributes["seq_sum"] == str(sum(range(1, 3001)))
        # The killed plugin's replacement got what its predecessor had in flight: nothing is lost.
        detections = sorted(f.event_ids[0] for f in findings if f.plugin == "exec_from_tmp")
        assert detections == list(range(10, 3001, 10))
        victim = sup.plugins["exec_from_tmp"]
        assert dict(victim.stats.restarts) == {"killed": 1}  # not the plugin's fault
        assert victim.stats.processed == 3000
        assert victim.stats.delivered == 3000 + victim.stats.redelivered
        assert sup.plugins["tally"].stats.restarts == {}


class TestFlowControl:
    """A slow plugin falls behind on its own queue; the others are not held up."""

    def test_slow_plugin_does_not_stall_the_fast_one(self, tmp_path: Path) -> None:
        slow_dir = tmp_path / "slow"
        slow_dir.mkdir()
        (slow_dir / "plugin.toml").write_text(
            '[plugin]\nname = "slow"\nversion = "1"\nentrypoint = "slow:Slow"\n'
            'subscribe = ["process"]\n'
        )
        (slow_dir / "slow.py").write_text(
            "import time\nfrom agent_host.sdk import Plugin\n\n"
            "class Slow(Plugin):\n    def on_event(self, event):\n        time.sleep(0.003)\n"
        )

        async def scenario() -> tuple[int, int]:
            sup = Supervisor(
                HostConfig(batch_size=16, state_dir=None),
                [*manifests("tally"), Manifest.load(slow_dir / "plugin.toml")],
                JsonLinesSink(None, None),
            )
            await sup.start()
            for i in range(1000):
                await sup.publish(exec_event(f"/usr/bin/p{i}"))
            tally, slow = sup.plugins["tally"], sup.plugins["slow"]
            while tally.stats.processed < 1000:
                await asyncio.sleep(0.01)
            behind = slow.stats.processed
            await sup.stop()
            return behind, slow.stats.processed

        behind, finally_processed = run(scenario())
        # The slow plugin needs 3 s for all 1,000 events; the fast one was done long before.
        assert behind < 500
        assert finally_processed == 1000


class TestIdle:
    def test_an_idle_host_does_not_keep_waking(self, tmp_path: Path) -> None:
        """Nothing polls when nothing happens: over two idle seconds the event loop's thread
        wakes a few times a second (the quiet watchdog), where the flush timer alone used to
        wake 400 times a second; and an event after the quiet is still processed at once."""

        def wakes() -> int:
            status = Path(f"/proc/self/task/{threading.get_native_id()}/status").read_text()
            (line,) = [x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches")]
            return int(line.split()[1])

        async def scenario() -> tuple[int, int]:
            sup = Supervisor(
                HostConfig(state_dir=None), manifests("tally"), JsonLinesSink(tmp_path / "f")
            )
            await sup.start()
            await sup.publish(exec_event("/usr/bin/id"))
            await sup.drain()
            await asyncio.sleep(0.5)  # settled: quiet from here
            before = wakes()
            await asyncio.sleep(2)
            idle = wakes() - before
            await sup.publish(exec_event("/usr/bin/id"))
            async with asyncio.timeout(5):
                await sup.drain()
            processed = sup.plugins["tally"].stats.processed
            await sup.stop()
            return idle, processed

        idle, processed = run(scenario())
        assert idle < 100  # 2 s: ~8 quiet watchdog ticks, a heartbeat, a sample; was ~900
        assert processed == 2
