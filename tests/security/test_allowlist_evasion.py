"""The allowlist is no evasion path: an attacker with sudo rights to apt is reported when apt is
started with a hook, asked to install nmap or to remove a package, by SigmaHQ's own rules, on
the real apt-get and dpkg, through the live process sensor, with the allowlist on (as shipped).
Before, every finding whose process was a package manager was suppressed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import SIGMAHQ, BackgroundHost, read_findings, sigmahq_plugin

pytestmark = pytest.mark.usefixtures("audit_lock")  # one audit reader a machine

APT_GET, DPKG = Path("/usr/bin/apt-get"), Path("/usr/bin/dpkg")
ABSENT = "agent-host-no-such-package"
# (the real program, harmless arguments, the SigmaHQ rule expected to fire)
CASES = [
    (APT_GET, ["-o", "APT::Update::Pre-Invoke::=/bin/true", "--help"], "apt_shell_execution"),
    (APT_GET, ["--simulate", "install", "nmap"], "install_suspicious_packages"),
    (APT_GET, ["--simulate", "remove", ABSENT], "remove_package"),
    (DPKG, ["--dry-run", "-r", ABSENT], "remove_package"),
]


@pytest.mark.slow  # 6 s: apt-get reads its package lists; .ci/run runs it after the test command
@pytest.mark.skipif(not SIGMAHQ.is_dir(), reason="../shared/sigma-linux is absent")
@pytest.mark.skipif(not (APT_GET.exists() and DPKG.exists()), reason="no apt-get and dpkg here")
def test_sigmahq_rules_about_package_managers_fire_with_the_allowlist_on(tmp_path: Path) -> None:
    sigmahq_plugin(tmp_path / "plugins")
    host = BackgroundHost(
        ["run", "--sensors", "process", "--plugins", "plugins", "--findings", "f.jsonl"],
        tmp_path,
    )
    host.wait_log("sensor started")
    for program, args, _ in CASES:
        subprocess.run([str(program), *args], capture_output=True, timeout=120, check=False)
    time.sleep(0.5)
    code, out = host.stop()
    assert code == 0, host.log_path.read_text()

    fired: dict[str, set[str]] = {}
    for finding in read_findings(tmp_path / "f.jsonl"):
        fired.setdefault(finding.attributes.get("CommandLine", ""), set()).add(finding.rule)
    missing = {}
    for program, args, rule in CASES:
        rule_file = SIGMAHQ / "process_creation" / f"proc_creation_lnx_{rule}.yml"
        expected = str(yaml.safe_load(rule_file.read_text())["id"])
        command_line = " ".join([str(program), *args])
        if expected not in fired.get(command_line, set()):
            missing[command_line] = rule
    assert missing == {}
    assert "package manager" not in out  # the summary names no allowlist hit
