"""End to end: the real agent-host command, real worker processes, real gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent_host.protocol import Event, FileEvent, NetworkEvent
from tests.helpers import (
    agent_host,
    exec_event,
    make_plugin,
    parse_logs,
    read_findings,
    recording,
    use_plugin,
)

REPO = Path(__file__).resolve().parent.parent.parent


def mixed_events(n: int) -> list[Event]:
    """n events: processes (every 37th from /tmp), files and network connections."""
    events: list[Event] = []
    for i in range(1, n + 1):
        if i % 3 == 0:
            events.append(Event(file=FileEvent(action=FileEvent.MODIFIED, path=f"/etc/f{i}")))
        elif i % 5 == 0:
            events.append(
                Event(
                    network=NetworkEvent(
                        action=NetworkEvent.CONNECT, pid=i, remote_address="10.9.8.7", remote_port=i
                    )
                )
            )
        else:
            events.append(exec_event(f"/tmp/m{i}" if i % 37 == 0 else f"/usr/bin/p{i}", pid=i))
    return events


def kind_seqs(events: list[Event], kinds: set[str]) -> list[int]:
    """Host sequence numbers (1-based line order) of the events of ``kinds``."""
    return [i for i, e in enumerate(events, 1) if e.WhichOneof("kind") in kinds]


class TestReplay:
    """A replay through several plugins yields exactly the expected findings."""

    def test_every_event_reaches_every_subscriber_exactly_once(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        for name in ("exec_from_tmp", "tally", "tally_files"):
            use_plugin(plugins, name)
        events = mixed_events(2000)
        recording(tmp_path / "rec.jsonl", events)

        run = agent_host(
            ["replay", "rec.jsonl", "--plugins", str(plugins), "--batch-size", "7"], cwd=tmp_path
        )

        assert run.returncode == 0, run.stderr
        tmp_seqs = [i for i, e in enumerate(events, 1) if e.process.exe.startswith("/tmp/")]
        detections = [f for f in run.findings if f.plugin == "exec_from_tmp"]
        assert sorted(f.event_ids[0] for f in detections) == tmp_seqs
        for f in detections:
            assert f.plugin_version == "1.3" and f.rule == "exec_tmp" and f.severity == f.HIGH
            assert list(f.techniques) == ["T1036"] and f.host and len(f.id) == 32
            assert f.HasField("time")
            assert events[f.event_ids[0] - 1].process.exe == f"/tmp/m{f.event_ids[0]}"

        for plugin, kinds in (("tally", {"process"}), ("tally_files", {"file", "network"})):
            expected = kind_seqs(events, kinds)
            tally = next(f for f in run.findings if f.plugin == plugin)
            assert dict(tally.attributes) == {
                "events": str(len(expected)),
                "distinct": str(len(expected)),
                "duplicates": "0",
                "seq_sum": str(sum(expected)),
                "kinds": ",".join(sorted(kinds)),
            }
            row = run.plugin(plugin)
            assert (row["delivered"], row["processed"]) == (len(expected), len(expected))
            assert (row["redelivered"], row["undelivered"], row["restarts"]) == (0, 0, {})
            assert row["state"] == "stopped"
        assert run.summary is not None and run.summary["events"] == 2000
        assert len(run.findings) == len(tmp_seqs) + 2

    def test_findings_on_terminal_and_plugin_output_in_host_log(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        use_plugin(plugins, "exec_from_tmp")
        recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/ls"), exec_event("/tmp/evil")])

        run = agent_host(["replay", "rec.jsonl", "--plugins", str(plugins)], cwd=tmp_path)

        assert run.returncode == 0
        assert "exec_from_tmp/exec_tmp: exec /tmp/evil" in run.stdout
        assert "HIGH" in run.stdout
        started = run.logs_with("plugin started")[0]
        pid = started["pid"]
        output = {
            (e["stream"], e["line"])
            for e in run.logs_with("plugin output")
            if e["plugin"] == "exec_from_tmp" and e["pid"] == pid
        }
        assert ("stdout", "exec_from_tmp says hello on stdout") in output
        assert ("stderr", "exec_from_tmp says hello on stderr") in output
        record = run.logs_with("caught /tmp/evil")[0]
        assert (record["plugin"], record["pid"], record["level"]) == (
            "exec_from_tmp",
            pid,
            "warning",
        )

    def test_host_stamps_findings_and_rejects_foreign_event_ids(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        use_plugin(plugins, "forger")
        # file, process, file, process, ...: the forger gets the process events (even seqs).
        events = [
            Event(file=FileEvent(path=f"/f{i}")) if i % 2 else exec_event(f"/usr/bin/x{i}")
            for i in range(1, 11)
        ]
        recording(tmp_path / "rec.jsonl", events)

        run = agent_host(
            ["replay", "rec.jsonl", "--plugins", str(plugins), "--batch-size", "1"], cwd=tmp_path
        )

        assert run.returncode == 0
        forged = sorted(
            (f for f in run.findings if f.rule == "forged"), key=lambda f: f.event_ids[0]
        )
        assert [f.message for f in forged] == [f"on {i}" for i in (2, 4, 6, 8, 10)]
        for f in forged:
            assert (f.plugin, f.plugin_version) == ("forger", "0.9")
            assert f.host != "elsewhere"
        earlier = sorted(list(f.event_ids) for f in run.findings if f.rule == "earlier")
        assert earlier == [[2, 4], [4, 6], [6, 8], [8, 10]]
        assert {f.rule for f in run.findings} == {"forged", "earlier"}
        rejected = run.logs_with("finding rejected")
        assert sorted(r["rule"] for r in rejected) == ["future"] * 5 + ["other_kind"] * 5
        assert all(r["plugin"] == "forger" for r in rejected)
        assert all("events it was not given" in r["problem"] for r in rejected)
        assert run.plugin("forger")["rejected_findings"] == 10


class TestShutdown:
    """SIGINT/SIGTERM: every accepted event is delivered and its findings written before exit."""

    def test_sigterm_drains_everything_accepted(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        use_plugin(plugins, "tally")
        (plugins / "suspicious_exec").symlink_to(
            REPO / "agent_host" / "plugins" / "suspicious_exec"
        )
        log_path = tmp_path / "host.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent_host",
                    "--log-format",
                    "json",
                    "run",
                    "--source",
                    "synthetic",
                    "--rate",
                    "5000",
                    "--plugins",
                    str(plugins),
                    "--findings",
                    "f.jsonl",
                    "--summary-json",
                    "s.json",
                    "--quiet",
                    "--state-dir",
                    "state",
                ],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            deadline = time.monotonic() + 60
            while "plugin started" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log_path.read_text()
        summary = json.loads((tmp_path / "s.json").read_text())
        findings = read_findings(tmp_path / "f.jsonl")
        tally = next(f for f in findings if f.plugin == "tally")
        # Every accepted process event reached the tally plugin, once.
        processed = next(p for p in summary["plugins"] if p["plugin"] == "tally")["processed"]
        assert int(tally.attributes["events"]) == processed == int(tally.attributes["distinct"])
        assert processed > 1000
        assert summary["events"] >= processed
        attacks = [f for f in findings if f.plugin == "suspicious_exec"]
        assert len(attacks) == summary["events"] // 50  # the synthetic source: 1 in 50
        errors = [e for e in parse_logs(log_path.read_text()) if e.get("level") == "error"]
        assert errors == []


def test_finding_ids_are_unique_across_runs(tmp_path: Path) -> None:
    """The same recording replayed twice: the same detections, each run's ids its own (a
    fleet's store or JetStream's duplicate window would silently drop a repeated id)."""
    use_plugin(tmp_path / "plugins", "exec_from_tmp")
    recording(tmp_path / "rec.jsonl", [exec_event(f"/tmp/x{i}", pid=i) for i in range(1, 6)])
    runs = [agent_host(["replay", "rec.jsonl", "--plugins", "plugins"], tmp_path) for _ in "ab"]
    assert all(run.returncode == 0 for run in runs)
    first, second = (run.findings for run in runs)
    assert [f.rule for f in first] == [f.rule for f in second] and len(first) == 5
    assert len({f.id for f in first}) == 5
    assert not {f.id for f in first} & {f.id for f in second}


def test_findings_lost_to_a_full_disk_are_said_and_fail_the_run(tmp_path: Path) -> None:
    """/dev/full takes no byte: every finding is lost. The terminal summary says so, naming
    the file and why, and the exit status is not 0 (a run that lost findings did not do its
    job, whatever else went well)."""
    use_plugin(tmp_path / "plugins", "exec_from_tmp")
    recording(tmp_path / "rec.jsonl", [exec_event(f"/tmp/x{i}", pid=i) for i in range(1, 8)])
    run = subprocess.run(
        [
            *(sys.executable, "-m", "agent_host", "--log-format", "json", "replay", "rec.jsonl"),
            *("--plugins", "plugins", "--quiet", "--findings", "/dev/full"),
            *("--summary-json", "summary.json", "--state-dir", "state"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 4, run.stderr[-2000:]
    assert "7 findings LOST: they could not be written to /dev/full (No space left" in run.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["findings_lost"] == 7
    (said,) = [e for e in parse_logs(run.stderr) if e["event"].startswith("findings could not")]
    assert said["path"] == "/dev/full"


SLOW_CATCHER = """\
import time
from agent_host.sdk import Finding, Plugin, Severity

class Detector(Plugin):
    def on_event(self, event):
        time.sleep(0.001)
        return Finding(rule="seen", severity=Severity.LOW, message=event.process.exe)
"""


def test_a_killed_replay_resumes_where_its_findings_were_written(tmp_path: Path) -> None:
    """SIGKILL in mid-replay, then ``replay --resume``: every event gets its finding, and what
    the first run had done is not done again (but for the last second of it, at most)."""
    make_plugin(tmp_path / "plugins", "catcher", SLOW_CATCHER)
    events = 4000
    recording(tmp_path / "rec.jsonl", [exec_event(f"/usr/bin/e{i}", pid=i) for i in range(events)])
    command = [
        *(sys.executable, "-m", "agent_host", "--log-format", "json", "replay", "rec.jsonl"),
        *("--plugins", "plugins", "--quiet", "--batch-size", "16", "--state-dir", "state"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [*command, "--findings", "first.jsonl"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    checkpoint = tmp_path / "state" / "replay.checkpoint"
    deadline = time.monotonic() + 60
    while not (checkpoint.exists() and json.loads(checkpoint.read_text())["entries_done"] > 500):
        assert first.poll() is None and time.monotonic() < deadline, "no progress kept"
        time.sleep(0.05)
    first.kill()  # as a host killed by the OOM killer or a power cut would be
    first.wait(timeout=30)
    done_first = len(read_findings(tmp_path / "first.jsonl"))
    assert 0 < done_first < events
    second = subprocess.run(
        [*command, "--findings", "second.jsonl", "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    seen = [
        f.message for name in ("first", "second") for f in read_findings(tmp_path / f"{name}.jsonl")
    ]
    assert set(seen) == {f"/usr/bin/e{i}" for i in range(events)}  # none missed
    assert len(seen) - events < done_first  # the first run's work was not all done again
    assert not checkpoint.exists()  # finished: nothing left to resume
    again = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert again.returncode == 2
    assert again.stderr.startswith("agent-host: --resume: no stopped replay to resume in")


def test_resume_refuses_a_recording_that_changed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    rec = recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/id")])
    (state / "replay.checkpoint").write_text(
        json.dumps({"recording": str(rec.resolve()), "size": 1, "mtime_ns": 1, "entries_done": 1})
    )
    use_plugin(tmp_path / "plugins", "tally")
    run = agent_host(["replay", "rec.jsonl", "--plugins", "plugins", "--resume"], tmp_path)
    assert run.returncode == 2
    assert (
        run.stderr
        == f"agent-host: --resume: {Path('rec.jsonl')} changed since the stopped replay\n"
    )
