"""The metrics endpoint while events flow: scraped by hand (the exposition parsed by
prometheus-client's own parser) and by a real Prometheus server, which ``.ci/run`` installs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_signals import REPO, copy_plugin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, list[Any]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(samples: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    for s in samples[family]:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no {sample} {labels} in {family}")


def until_up(port: int, agent: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert agent.poll() is None, "the agent ended"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("metrics never served")


@pytest.mark.slow  # 8 s: run after the test command by .ci/run
def test_metrics_while_events_flow(tmp_path: Path) -> None:
    copy_plugin("tally", tmp_path / "plugins", "counted")
    port = free_port()
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent_host", "run", "--source", "synthetic"),
            *("--rate", "500", "--duration", "120", "--quiet", "--no-watch-plugins"),
            *("--plugins", str(tmp_path / "plugins"), "--state-dir", str(tmp_path / "state")),
            *("--metrics-port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        until_up(port, agent)
        first = scrape(port)
        time.sleep(1.0)
        second = scrape(port)
        prometheus = shutil.which("prometheus")
        if prometheus is not None:
            scraped = scraped_by_prometheus(prometheus, port, tmp_path)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr[-2000:]
    accepted = [
        value(s, "agent_host_events_accepted", "agent_host_events_accepted_total")
        for s in (first, second)
    ]
    assert 0 < accepted[0] < accepted[1]  # events flow between the scrapes
    plugin = {"plugin": "counted", "version": "1.0"}
    processed = value(
        second,
        "agent_host_plugin_events_processed",
        "agent_host_plugin_events_processed_total",
        **plugin,
    )
    assert 0 < processed <= accepted[1]
    batches = value(
        second,
        "agent_host_plugin_batch_latency_seconds",
        "agent_host_plugin_batch_latency_seconds_count",
        **plugin,
    )
    infinite = value(
        second,
        "agent_host_plugin_batch_latency_seconds",
        "agent_host_plugin_batch_latency_seconds_bucket",
        le="+Inf",
        **plugin,
    )
    assert batches == infinite > 0
    assert (
        value(second, "agent_host_plugin_quarantined", "agent_host_plugin_quarantined", **plugin)
        == 0
    )
    assert "agent_host_backlog_batches" in second
    if prometheus is None:
        pytest.skip("prometheus is not installed (.ci/run installs it): not scraped by it")
    assert scraped["up"] == 1 and scraped["accepted"] > 0


def scraped_by_prometheus(binary: str, port: int, tmp_path: Path) -> dict[str, float]:
    """Run a real Prometheus that scrapes the agent every 0.5 s; what it stored, by its API."""
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 500ms}\n"
        "scrape_configs:\n"
        f"  - {{job_name: agent-host, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n"
    )
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def query(expression: str) -> float | None:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        try:
            reply = json.loads(urllib.request.urlopen(url, timeout=2).read())
        except OSError:
            return None
        result = reply["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            up = query('up{job="agent-host"}')
            accepted = query('agent_host_events_accepted_total{job="agent-host"}')
            if up is not None and accepted is not None:
                return {"up": up, "accepted": accepted}
            time.sleep(0.25)
        raise AssertionError("Prometheus never scraped the agent")
    finally:
        server.terminate()
        server.wait(timeout=30)
