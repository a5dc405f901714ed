"""Findings to the receivers an operator already runs, each real and started by the test: an
HTTP server (the webhook), rsyslog and journald (the system's log), a program's input; and the
findings file rotated by size. Every finding the host wrote arrives, through a receiver that
fails for a while; one that refuses for good is counted and said, not waited on forever."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_host.host.findings import JsonLinesSink
from agent_host.protocol import Finding
from tests.e2e.test_signals import REPO, copy_plugin
from tests.helpers import HostRun, agent_host, exec_event, recording

FINDINGS = 40  # exec events from /tmp, one finding each, and as many that find nothing


def run_with(tmp_path: Path, *output: str) -> HostRun:
    """``agent-host run`` on a recording that makes FINDINGS findings, with ``output``."""
    copy_plugin("exec_from_tmp", tmp_path / "plugins", "catcher")
    events = []
    for n in range(FINDINGS):
        events += [exec_event(f"/tmp/dropped-{n}", pid=1000 + n), exec_event("/usr/bin/ls", n)]
    source = recording(tmp_path / "events.jsonl", events)
    args = ["run", "--source", f"replay:{source}", "--plugins", str(tmp_path / "plugins")]
    return agent_host([*args, "--quiet", "--no-watch-plugins", *output], tmp_path)


def written_ids(run: HostRun) -> list[str]:
    assert len(run.findings) == FINDINGS, run.stderr[-2000:]
    return sorted(f.id for f in run.findings)


class Receiver(BaseHTTPRequestHandler):
    """Answers each POST with the next of ``answers`` (then 200); keeps what a 2xx took."""

    answers: list[int]
    taken: list[tuple[str, dict[str, str], list[dict[str, Any]]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300:
            lines = [json.loads(line) for line in body.splitlines()]
            self.taken.append((self.path, dict(self.headers), lines))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("Handler", (Receiver,), {"answers": [], "taken": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


class TestWebhook:
    def test_every_finding_arrives_through_a_failing_receiver(
        self, tmp_path: Path, receiver: tuple[str, type[Receiver]]
    ) -> None:
        url, handler = receiver
        handler.answers = [503, 503, 502]  # away for a while, then back
        run = run_with(
            tmp_path, "--webhook", url, "--webhook-header", "Authorization: Bearer s3cret"
        )
        assert run.returncode == 0, run.stderr[-2000:]
        findings = [b for _, h, lines in handler.taken for b in lines if "rule" in b]
        assert sorted(f["id"] for f in findings) == written_ids(run)  # each once, none lost
        assert {h["Authorization"] for _, h, _ in handler.taken} == {"Bearer s3cret"}
        assert {h["X-Agent-Host-Kind"] for _, h, _ in handler.taken} == {"findings", "summary"}
        (summary,) = [lines[0] for _, h, lines in handler.taken if "summary" in h.values()]
        assert summary["findings"] == FINDINGS
        assert run.logs_with("webhook receiver unreachable; findings spooled on disk")
        assert run.summary is not None and run.summary["webhook"]["sent"] == FINDINGS

    def test_a_receiver_that_refuses_is_counted_not_waited_on(
        self, tmp_path: Path, receiver: tuple[str, type[Receiver]]
    ) -> None:
        url, handler = receiver
        handler.answers = [401] * 1000  # a wrong token will not become right by retrying
        run = run_with(tmp_path, "--webhook", url)
        assert run.returncode == 4, run.stderr[-2000:]  # findings that did not get there
        assert run.summary is not None
        assert run.summary["webhook"] == {
            "sent": 0, "dropped": 0, "refused": FINDINGS, "spooled_bytes": 0
        }  # fmt: skip
        assert f"{FINDINGS} findings REFUSED by the webhook receiver" in run.stdout

    def test_a_password_in_the_url_is_not_logged(
        self, tmp_path: Path, receiver: tuple[str, type[Receiver]]
    ) -> None:
        url, handler = receiver
        handler.answers = [503]  # said unreachable once, with the target
        with_password = url.replace("http://", "http://ops:pw-s3cret@")
        run = run_with(tmp_path, "--webhook", with_password)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "pw-s3cret" not in run.stderr
        said = run.logs_with("webhook receiver unreachable; findings spooled on disk")
        assert said and said[0]["target"] == url.replace("http://", "http://ops:***@")
        assert {h["Authorization"] for _, h, _ in handler.taken} == {"Basic b3BzOnB3LXMzY3JldA=="}

    @pytest.mark.parametrize("url", ["ftp://x/y", "http://", "http://h:99999/", "x"])
    def test_a_url_that_is_not_http_is_one_line(self, tmp_path: Path, url: str) -> None:
        run = agent_host(["run", "--source", "synthetic", "--webhook", url], tmp_path)
        assert run.returncode == 2
        assert "not an HTTP URL" in run.stderr and "Traceback" not in run.stderr


RSYSLOGD = shutil.which("rsyslogd")


@pytest.mark.skipif(RSYSLOGD is None, reason="rsyslog is not installed (.ci/run installs it)")
def test_syslog_to_a_real_rsyslog(tmp_path: Path) -> None:
    assert RSYSLOGD is not None
    socket_path, received = tmp_path / "log.sock", tmp_path / "received.log"
    config = tmp_path / "rsyslog.conf"
    config.write_text(
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{socket_path}")\n'
        'template(name="plain" type="string" '
        'string="%syslogfacility-text% %syslogseverity-text% %app-name% %msg%\\n")\n'
        f'*.* action(type="omfile" file="{received}" template="plain")\n'
    )
    daemon = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "rsyslogd did not start"
            time.sleep(0.05)
        run = run_with(tmp_path, "--syslog", f"unix:{socket_path}")
        assert run.returncode == 0, run.stderr[-2000:]
        lines: list[str] = []
        while len(lines) < FINDINGS + 1 and time.monotonic() < deadline:
            time.sleep(0.1)  # rsyslog writes its file on its own time
            lines = received.read_text().splitlines() if received.exists() else []
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    findings = [line.split(" ", 3) for line in lines if '"rule"' in line]
    # facility auth, the severity HIGH as err, the JSON whole in the message
    assert {(f[0], f[1], f[2]) for f in findings} == {("auth", "err", "agent-host")}
    assert sorted(json.loads(f[3])["id"] for f in findings) == written_ids(run)


JOURNALD = next(
    (p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
     if os.path.exists(p)),
    None,
)  # fmt: skip


@pytest.mark.skipif(JOURNALD is None, reason="systemd-journald is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a private /run for journald needs root")
def test_findings_to_a_real_journald(tmp_path: Path) -> None:
    """journald on its own socket in a /run of the test's own (a mount namespace), the agent
    beside it with ``--syslog``: the journal is found by itself, and each finding is an entry
    with its fields, selectable by them."""
    copy_plugin("exec_from_tmp", tmp_path / "plugins", "catcher")
    events = [exec_event(f"/tmp/dropped-{n}", pid=1000 + n) for n in range(FINDINGS)]
    source = recording(tmp_path / "events.jsonl", events)
    agent = [
        *(sys.executable, "-m", "agent_host", "--log-format", "json", "run", "--quiet"),
        *("--source", f"replay:{source}", "--plugins", str(tmp_path / "plugins")),
        *("--state-dir", str(tmp_path / "state"), "--findings", str(tmp_path / "f.jsonl")),
        *("--no-watch-plugins", "--syslog"),
    ]
    script = f"""
        set -e
        mount -t tmpfs tmpfs /run
        mkdir -p /run/systemd/journal
        {JOURNALD} & journald=$!
        while [ ! -S /run/systemd/journal/socket ]; do sleep 0.05; done
        {" ".join(agent)} 2> {tmp_path / "agent.log"}
        sleep 0.5
        journalctl -D /run/log/journal -o json --no-pager AGENT_HOST_PLUGIN=catcher
        kill $journald
    """
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr + (tmp_path / "agent.log").read_text()[-2000:]
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    written = sorted(
        json.loads(line)["id"] for line in (tmp_path / "f.jsonl").read_text().splitlines()
    )
    assert sorted(e["AGENT_HOST_ID"] for e in entries) == written
    entry = entries[0]
    assert entry["PRIORITY"] == "3" and entry["SYSLOG_IDENTIFIER"] == "agent-host"
    assert entry["AGENT_HOST_RULE"] == "exec_tmp" and entry["MESSAGE"].startswith("exec_tmp: ")
    assert json.loads(entry["AGENT_HOST_FINDING"])["id"] == entry["AGENT_HOST_ID"]


class TestProgram:
    def test_every_finding_arrives_through_a_program_that_dies(self, tmp_path: Path) -> None:
        out, marker = tmp_path / "piped.jsonl", tmp_path / "started-once"
        # The first start exits at once, its input unread; the second reads all.
        command = f"test -e {marker} || {{ touch {marker}; exit 7; }}; exec cat >> {out}"
        run = run_with(tmp_path, "--program", command)
        assert run.returncode == 0, run.stderr[-2000:]
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        piped = sorted({f["id"] for f in lines if "rule" in f})
        assert piped == written_ids(run)
        assert next(f for f in lines if "plugins" in f)["findings"] == FINDINGS  # the summary
        assert run.logs_with("program output unreachable; findings spooled on disk")

    def test_what_the_program_prints_goes_to_the_log(self, tmp_path: Path) -> None:
        run = run_with(tmp_path, "--program", "cat > /dev/null; echo consumer done >&2")
        assert run.returncode == 0, run.stderr[-2000:]
        said = [
            e["line"] for e in run.logs_with("plugin output") if e["plugin"] == "program output"
        ]
        assert said == ["consumer done"]


def test_the_findings_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "findings.jsonl"
    sink = JsonLinesSink(path, terminal=None, max_bytes=4000, keep=2)
    written = []
    for batch in range(60):
        findings = [Finding(id=f"f{batch}-{n}", rule="r", message="x" * 50) for n in range(3)]
        sink.write(findings)
        written += [f.id for f in findings]
    sink.close()
    files = [path.with_name(f"{path.name}.2"), path.with_name(f"{path.name}.1"), path]
    assert not path.with_name(f"{path.name}.3").exists()  # only `keep` rotated files
    kept = [json.loads(line)["id"] for f in files for line in f.read_text().splitlines()]
    assert kept == written[-len(kept) :]  # the newest, in order, no line cut in two
    for rotated in files[:2]:
        assert 4000 <= rotated.stat().st_size < 4000 + 3 * 200  # cut at a batch's end
        assert rotated.stat().st_mode & 0o777 == 0o600
