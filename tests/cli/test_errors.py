"""Every user error is one line, ``agent-host: <what>: <why>``, and exit code 2, whatever the
log format; the state folder of ``replay`` is its own unless one is given."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_host.protocol import message_to_json
from tests.helpers import BackgroundHost, exec_event, use_plugin

REPO = Path(__file__).resolve().parents[2]


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_host", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(cwd / "xdg"), **env},
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    use_plugin(tmp_path / "plugins", "tally")
    (tmp_path / "rec.jsonl").write_text(message_to_json(exec_event("/usr/bin/id")) + "\n")
    (tmp_path / "a_file").write_text("")
    return tmp_path


REPLAY = ["replay", "rec.jsonl", "--plugins", "plugins", "--quiet"]
CASES = [
    (["run", "--duration", "-1"], "--duration: must not be negative, got -1"),
    (["run", "--duration", "nan"], "--duration: must be a finite number, got nan"),
    ([*REPLAY, "--flush-ms", "inf"], "--flush-ms: must be a finite number, got inf"),
    (["run", "--metrics-port", "70000"], "--metrics-port: must be a port, 0 to 65535, got 70000"),
    (
        ["run", "--export", "http://x", "--plugins", "plugins"],
        "--export: not a NATS server URL (nats://HOST:PORT): 'http://x'",
    ),
    (
        ["run", "--export", "nats://a:4222,nats://b:99999", "--plugins", "plugins"],
        "--export: not a NATS server URL (nats://HOST:PORT): 'nats://b:99999'",
    ),
    ([*REPLAY, "--flush-ms", "0"], "--flush-ms: must be positive, got 0"),
    ([*REPLAY, "--batch-size", "many"], "--batch-size: not a number: 'many'"),
    (
        [*REPLAY, "--findings", "missing/f.jsonl"],
        "--findings: cannot open missing/f.jsonl: No such file or directory",
    ),
    ([*REPLAY, "--summary-json", "missing/s.json"], "--summary-json: folder does not exist"),
    ([*REPLAY, "--state-dir", "a_file"], "--state-dir: cannot use a_file: File exists"),
    (["replay", "nope.jsonl"], "nope.jsonl: recording not found"),
    (["run", "--source", "tape", "--plugins", "plugins"], "--source: unknown source 'tape'"),
    (["run", "--sensors", "sonar", "--plugins", "plugins"], "--sensors: unknown sensor 'sonar'"),
    (["plugins", "list", "--plugins", "missing"], "--plugins: not a folder: missing"),
    (["plugins", "release", "tally"], "tally: not quarantined"),
    (["plugins", "new", "Bad-Name"], "'Bad-Name' is not a valid plugin name"),
    (["record", "-o", "missing/r.jsonl"], "--output: cannot write missing/r.jsonl"),
    (["deadletters", "--export", "missing/p.jsonl"], "--export: cannot write missing/p.jsonl"),
    (
        [*REPLAY, "--trusted-key", "missing.pub"],
        "--trusted-key: cannot read missing.pub: No such file or directory",
    ),
    ([*REPLAY, "--trusted-key", "a_file"], "--trusted-key: a_file: not an Ed25519 public key"),
    (
        ["run", "--plugins", "plugins", "--control-socket", "missing/c.sock"],
        "--control-socket: folder does not exist: missing",
    ),
    (["keys", "new", "--out", "missing/k"], "--out: cannot write missing/k.key"),
    (["attest", "--nonce", "n", "-o", "missing/r.json"], "--out: folder does not exist: missing"),
    (["plugins", "sign", "plugins/tally", "--key", "missing.key"], "--key: cannot read missing"),
    (["replay"], "the following arguments are required: recording"),
    (["replay", "rec.jsonl", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


class TestUserErrors:
    """One line naming the flag or file, exit 2, no traceback, in either log format."""

    @pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
    @pytest.mark.parametrize("log_format", ["json", "console"])
    def test_one_line(self, workdir: Path, args: list[str], message: str, log_format: str) -> None:
        done = cli(["--log-format", log_format, *args], workdir)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"agent-host: {message}"), lines[0]


class TestReplayState:
    """Replaying a recording never touches the daemon's quarantines and dead letters."""

    def test_replay_keeps_its_state_apart(self, workdir: Path) -> None:
        done = cli([*REPLAY], workdir)
        assert done.returncode == 0, done.stderr
        assert (workdir / "xdg" / "agent-host" / "replay" / "state.sqlite3").is_file()
        assert not (workdir / "xdg" / "agent-host" / "state.sqlite3").exists()
        listing = cli(["plugins", "list", "--plugins", "plugins"], workdir)
        assert (workdir / "xdg" / "agent-host" / "state.sqlite3").is_file()  # the daemon's
        assert "1 usable, 0 with errors, 0 quarantined" in listing.stdout


def test_a_recording_that_cannot_be_written_ends_with_one_line(tmp_path: Path) -> None:
    """``record -o /dev/full``: the first write fails (no space); the recording ends there with
    one line naming the output, exit 2, no traceback."""
    watched = tmp_path / "watched"
    watched.mkdir()
    args = ["record", "-o", "/dev/full", "--sensors", "file", "--watch", str(watched)]
    recorder = BackgroundHost([*args, "--duration", "30"], tmp_path)
    deadline = time.monotonic() + 30
    n = 0
    while recorder.proc.poll() is None and time.monotonic() < deadline:
        (watched / f"f{n}").write_text("x" * 4096)  # enough events to fill the buffer
        n += 1
        time.sleep(0.005)
    recorder.proc.wait(timeout=30)
    code, _ = recorder.stop()  # already ended: collects it and closes its log
    assert code == 2
    err = recorder.log_path.read_text()
    last = err.strip().splitlines()[-1]
    assert last.startswith("agent-host: --output: cannot write /dev/full: No space left on device")
    assert "Traceback" not in err
