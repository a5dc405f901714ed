"""SigmaHQ rules fire on real command lines, through live sensors and a real worker.

Each case runs a harmless stand-in program (a tiny C program that sleeps 0.3 s, whatever its
arguments) under the name of the tool a rule is about, with the arguments the rule looks for,
and asserts that exactly the expected rule fired for that command line. The stand-ins live in a
folder of the user's home directory, not under /tmp, so that the "execution from /tmp" rule does
not fire as well.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import SIGMAHQ, BackgroundHost, read_findings, sigmahq_plugin

pytestmark = pytest.mark.usefixtures("audit_lock")  # one audit reader a machine

SHARED = SIGMAHQ / "process_creation"
STANDIN_C = "#include <unistd.h>\nint main(void) { usleep(300000); return 0; }\n"

# (program name, arguments, the SigmaHQ rule file expected to fire, alone)
CASES = [
    ("at", "now", "proc_creation_lnx_at_command"),
    ("auditctl", "-D", "proc_creation_lnx_auditctl_clear_rules"),
    ("base64", "-d payload.b64", "proc_creation_lnx_base64_decode"),
    ("bpftrace", "--unsafe -e x", "proc_creation_lnx_bpftrace_unsafe_option_usage"),
    ("setcap", "cap_setgid+ep ./x", "proc_creation_lnx_cap_setgid"),
    ("setcap", "cap_setuid+ep ./y", "proc_creation_lnx_cap_setuid"),
    ("getcap", "-r / x", "proc_creation_lnx_capa_discovery"),
    ("capsh", "--", "proc_creation_lnx_capsh_shell_invocation"),
    ("chattr", "-i ./file", "proc_creation_lnx_chattr_immutable_removal"),
    ("sudo", "--chroot /srv/x ls", "proc_creation_lnx_chroot_execution"),
    ("xclip", "-sel clip -o", "proc_creation_lnx_clipboard_collection"),
    ("crontab", "-l", "proc_creation_lnx_crontab_enumeration"),
    ("crontab", "-r", "proc_creation_lnx_crontab_removal"),
    ("dd", "if=./x of=/proc/1/mem", "proc_creation_lnx_dd_process_injection"),
    ("doas", "ls", "proc_creation_lnx_doas_execution"),
    ("env", "/bin/sh", "proc_creation_lnx_env_shell_invocation"),
    ("esxcli", "network ip interface list", "proc_creation_lnx_esxcli_network_discovery"),
    ("bash", "-i -c true", "proc_creation_lnx_bash_interactive_shell"),
    ("apt-get", "-o APT::Update::Pre-Invoke::=id update", "proc_creation_lnx_apt_shell_execution"),
    ("curl", "https://example.org/", "proc_creation_lnx_curl_usage"),
    ("cp", "/etc/passwd /tmp/p", "proc_creation_lnx_cp_passwd_or_shadow_tmp"),
]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/sigma-linux is absent")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the stand-in")
def test_sigmahq_rules_fire_on_real_commands(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    sigmahq_plugin(plugins)

    standins = Path(tempfile.mkdtemp(prefix="agent-host-standins-", dir=Path.home()))
    try:
        source = tmp_path / "standin.c"
        source.write_text(STANDIN_C)
        subprocess.run(["cc", "-O2", "-o", str(standins / "standin"), str(source)], check=True)
        for name in {name for name, _, _ in CASES}:
            shutil.copy(standins / "standin", standins / name)

        host = BackgroundHost(
            [
                "run",
                "--sensors",
                "process",
                "--plugins",
                str(plugins),
                "--findings",
                "f.jsonl",
                "--quiet",
            ],
            tmp_path,
        )
        host.wait_log("sensor started")
        running = [
            subprocess.Popen([str(standins / name), *args.split()], cwd=standins)
            for name, args, _ in CASES
        ]
        for proc in running:
            assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        code, _ = host.stop()
        assert code == 0
    finally:
        shutil.rmtree(standins, ignore_errors=True)

    fired: dict[str, set[str]] = {}
    for finding in read_findings(tmp_path / "f.jsonl"):
        fired.setdefault(finding.attributes["CommandLine"], set()).add(finding.rule)
    wrong = {}
    for name, args, rule_file in CASES:
        expected = str(yaml.safe_load((SHARED / f"{rule_file}.yml").read_text())["id"])
        got = fired.get(f"{standins / name} {args}", set())
        if got != {expected}:
            wrong[f"{name} {args}"] = (rule_file, got)
    assert wrong == {}
    assert len({rule for _, _, rule in CASES}) >= 20
