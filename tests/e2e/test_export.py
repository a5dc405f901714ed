"""Findings exported to a real NATS JetStream server that the test starts, stops mid-run and
starts again: detection never waits, the spool catches up, and the stream ends with exactly the
findings the host wrote, each once, and the run's summary."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from agent_host.cli.metrics import HostCollector
from agent_host.host.config import HostConfig
from agent_host.host.exports.nats import NatsExport
from agent_host.host.exports.spool import Spool
from agent_host.host.findings import CollectingSink
from agent_host.host.supervisor import Supervisor
from benchmarks.export import nats_server
from tests.e2e.test_metrics import free_port
from tests.e2e.test_signals import REPO, copy_plugin
from tests.helpers import exec_event, recording

SERVER = shutil.which("nats-server")


def start_server(port: int, store: Path) -> subprocess.Popen[bytes]:
    assert SERVER is not None
    return nats_server(port, store)


def stream_contents(port: int) -> list[tuple[str, dict[str, Any]]]:
    async def read() -> list[tuple[str, dict[str, Any]]]:
        client = await nats.connect(f"nats://127.0.0.1:{port}")
        js = client.jetstream()
        info = await js.stream_info("AGENT_HOST")
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("AGENT_HOST", seq)
            messages.append((message.subject, json.loads(message.data)))
        await client.close()
        return messages

    return asyncio.run(read())


@pytest.mark.slow  # 8 s: run after the test command by .ci/run
@pytest.mark.skipif(SERVER is None, reason="nats-server is not installed (.ci/run installs it)")
def test_export_through_a_server_outage(tmp_path: Path) -> None:
    copy_plugin("exec_from_tmp", tmp_path / "plugins", "catcher")
    port, store = free_port(), tmp_path / "jetstream"
    server = start_server(port, store)
    findings = tmp_path / "findings.jsonl"
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "synthetic", "--rate", "1000", "--duration", "120", "--quiet"),
            *("--plugins", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state")),
            *("--findings", str(findings), "--export", f"nats://127.0.0.1:{port}"),
            "--no-watch-plugins",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    def written() -> int:
        return len(findings.read_text().splitlines()) if findings.exists() else 0

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 60
        while written() < count:
            assert agent.poll() is None and time.monotonic() < deadline, "no findings"
            time.sleep(0.1)

    try:
        wait_for(10)
        server.terminate()  # the fleet's server goes away mid-run ...
        server.wait(timeout=30)
        during = written()
        wait_for(during + 20)  # ... and detection goes on
        server = start_server(port, store)  # ... and it comes back
        wait_for(written() + 10)
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    try:
        assert agent.returncode == 0, stderr[-2000:]
        messages = stream_contents(port)
    finally:
        server.terminate()
        server.wait(timeout=30)
    logs = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "export server unreachable; findings spooled on disk" in logs
    assert "export server reachable again; sending the spool" in logs
    file_ids = [json.loads(line)["id"] for line in findings.read_text().splitlines()]
    exported = [body["id"] for subject, body in messages if subject == "agent-host.findings"]
    assert sorted(exported) == sorted(file_ids)  # every finding, once, none lost in the outage
    (summary,) = [body for subject, body in messages if subject == "agent-host.summary"]
    assert summary["findings"] == len(file_ids) and summary["plugins"][0]["plugin"] == "catcher"


def test_the_spool_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    spool.append([b"x" * 40, b"y" * 40, b"z" * 40])  # the third would pass the bound
    assert (spool.size, spool.dropped) == (82, 1)
    first = spool.peek()
    assert first == [b"x" * 40]
    spool.advance(first)
    spool.close()
    reopened = Spool(tmp_path, max_bytes=100)  # a later run goes on where this one stopped
    assert reopened.peek(10) == [b"y" * 40]
    reopened.advance([b"y" * 40])
    assert (reopened.size, reopened.pending) == (0, False)  # emptied once all was sent
    reopened.close()


def test_findings_dropped_from_the_export_are_said_everywhere(tmp_path: Path) -> None:
    """No server for the whole run and a spool of 1 MiB: what passes the bound is dropped, and
    that is in the terminal summary, the summary file, the log at error level and the exit
    status, never only in an info line."""
    copy_plugin("exec_from_tmp", tmp_path / "plugins", "catcher")
    events = [exec_event(f"/tmp/payload-{i}", pid=i) for i in range(1, 8001)]
    recording(tmp_path / "rec.jsonl", events)  # 8,000 findings of about 400 bytes: 3 MiB
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "run"),
            *("--source", "replay:rec.jsonl", "--quiet", "--plugins", "plugins"),
            *("--state-dir", "state", "--summary-json", str(summary)),
            *("--export", f"nats://127.0.0.1:{free_port()}", "--export-spool-mb", "1"),
            "--no-watch-plugins",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 4, run.stderr[-2000:]
    counts = json.loads(summary.read_text())["export"]
    assert counts["sent"] == 0 and counts["dropped"] > 4000
    assert f"{counts['dropped']} findings DROPPED from the export" in run.stdout
    errors = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    (said,) = [e for e in errors if e["event"].startswith("findings dropped from the export")]
    assert said["level"] == "error" and said["dropped"] == counts["dropped"]


def test_the_metrics_count_what_the_export_sent_and_dropped(tmp_path: Path) -> None:
    export = NatsExport("nats://127.0.0.1:1", "agent-host", tmp_path, max_spool_mib=1)
    export.spool.append([b"x" * 600_000, b"y" * 600_000])  # the second passes 1 MiB
    sup = Supervisor(HostConfig(state_dir=None), [], CollectingSink())
    samples = {
        sample.name: sample.value
        for metric in HostCollector(sup, None, [export]).collect()
        for sample in metric.samples
    }
    export.spool.close()
    sup.store.close()
    assert samples["agent_host_export_dropped_total"] == 1
    assert samples["agent_host_export_sent_total"] == 0
