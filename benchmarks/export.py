"""The NATS JetStream export: findings per second sent and acknowledged, beside the rate at
which the host writes them.

    python -m benchmarks.export [--findings N] [--out FILE]

Starts a real ``nats-server -js`` on a free loopback port (the Debian package that .ci/run
installs), then measures, in one run:

- ``host_findings_per_s``: the finding pipeline alone (cap, check, stamp, id, dedup) writing
  N findings into a JSON Lines file: the rate the export must keep up with;
- ``export_findings_per_s``: the same N findings handed to the export as the host hands them
  (one batch of 256 at a time), until the server has acknowledged every one; the spool is
  bounded at 64 MiB, as by default, and ``dropped`` says whether it overflowed.

Read the ratio; the absolute rates depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_host import logs
from agent_host.host.exports.nats import NatsExport
from agent_host.host.findings import FindingPipeline, JsonLinesSink, Source
from agent_host.host.stats import PluginStats
from agent_host.protocol import Finding

BATCH = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server(port: int, store: Path) -> subprocess.Popen[bytes]:
    """A real ``nats-server -js`` on ``127.0.0.1:port``, its streams in ``store``, once it
    takes connections (the tests start theirs with this too)."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server is not installed (apt-get install nats-server)")
    server = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("nats-server did not start")


def _findings(n: int) -> list[Finding]:
    return [
        Finding(
            rule="exec_from_writable_dir",
            severity=Finding.HIGH,
            message=f"/tmp/payload-{i} executed by /usr/bin/bash",
            event_ids=[i + 1],
            techniques=["T1036"],
            attributes={"path": f"/tmp/payload-{i}"},
        )
        for i in range(n)
    ]


def _pipeline_rate(n: int, workdir: Path) -> tuple[float, list[Finding]]:
    written: list[Finding] = []
    pipeline = FindingPipeline(JsonLinesSink(workdir / "findings.jsonl", None), "bench")
    pipeline.listeners.append(written.extend)
    source = Source("bench", "1.0", "sha256:00", "", 1_000, PluginStats(), lambda seq: True)
    findings = _findings(n)
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        pipeline.accept(source, findings[i : i + BATCH])
    elapsed = time.perf_counter() - started
    pipeline.close()
    return n / elapsed, written


async def _export_rate(url: str, written: list[Finding], workdir: Path) -> dict[str, Any]:
    export = NatsExport(url, "bench", workdir / "spool", 64)
    export.start()
    started = time.perf_counter()
    for i in range(0, len(written), BATCH):
        export.findings_written(written[i : i + BATCH])
        await asyncio.sleep(0)  # as the host does between batches
    while export.spool.pending:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    sent, dropped = export.sent, export.spool.dropped
    await export.close(5.0)
    return {"export_findings_per_s": sent / elapsed, "sent": sent, "dropped": dropped}


def measure(n: int) -> dict[str, Any]:
    logs.configure("json", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = _free_port()
        server = nats_server(port, workdir / "store")
        try:
            host_rate, written = _pipeline_rate(n, workdir)
            result = asyncio.run(_export_rate(f"nats://127.0.0.1:{port}", written, workdir))
        finally:
            server.terminate()
            server.wait(10)
    result["findings"] = n
    result["host_findings_per_s"] = host_rate
    result["export_over_host"] = result["export_findings_per_s"] / host_rate
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.findings)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
