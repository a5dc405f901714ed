"""Suspicious process executions, each rule with its MITRE ATT&CK technique.

- exec_from_writable_dir (T1036): a program run from /tmp, /dev/shm or /var/tmp, where droppers
  and miners land because anyone can write there;
- reverse_shell (T1059.004): a shell wired to a socket: bash's /dev/tcp, nc/ncat -e, socat exec,
  or a scripting language that connects a socket to a shell;
- download_and_execute (T1105): curl or wget piped straight into a shell;
- shell_from_network_service (T1505.003): a shell whose parent is a web server or another network
  service, the signature of a web shell or an exploited service;
- base64_payload_to_shell (T1140): base64-decoded text piped to a shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from agent_host.sdk import Event, Finding, Plugin, ProcessAction, Severity

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox", "fish"})
_REVERSE_SHELL = re.compile(
    r"/dev/(tcp|udp)/[^/\s]+/\d+"  # bash -i >& /dev/tcp/host/port
    r"|\b(nc|ncat|netcat)\b[^|;]*\s-[a-z]*[ec]\b"  # nc -e /bin/sh host port
    r"|\bsocat\b.*\bexec:"  # socat tcp:host:port exec:sh
    r"|socket\b.*\bconnect\b.*(\bpty\.spawn|\bsubprocess|\bdup2)"  # python/perl one-liners
    r"|\bmkfifo\b.*\|\s*(/bin/)?(ba)?sh\b.*\|\s*(nc|ncat)\b",  # the mkfifo + nc pattern
    re.IGNORECASE,
)
_DOWNLOAD_AND_RUN = re.compile(
    r"\b(curl|wget)\b[^|;]*\|\s*(sudo\s+)?(/\S*/)?(ba|da|z|k)?sh\b", re.IGNORECASE
)
_BASE64_TO_SHELL = re.compile(
    r"\bbase64\s+(-d|--decode|-D)\b[^|;]*\|\s*(sudo\s+)?(/\S*/)?(ba|da|z|k)?sh\b"
    r"|\becho\s+\S+\s*\|\s*base64\s+(-d|--decode)\s*\|\s*(/\S*/)?(ba|da|z|k)?sh\b",
    re.IGNORECASE,
)


def _name(path: str) -> str:
    return PurePosixPath(path).name


class SuspiciousExec(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        self.prefixes = tuple(config.get("writable_dirs", ["/tmp/", "/dev/shm/", "/var/tmp/"]))
        self.services = frozenset(config.get("network_services", []))

    def on_event(self, event: Event) -> Iterator[Finding]:
        process = event.process
        if process.action != ProcessAction.START:
            return
        cmdline = " ".join(process.cmdline)
        who = (
            f"pid {process.pid}, user {process.user or process.uid}, "
            f"parent {process.parent_exe or process.ppid}"
        )
        attributes = {"exe": process.exe, "cmdline": cmdline}
        if process.exe.startswith(self.prefixes):
            yield Finding(
                rule="exec_from_writable_dir",
                severity=Severity.HIGH,
                message=f"{process.exe} executed from a world-writable folder ({who})",
                attributes=attributes,
                techniques=("T1036",),
            )
        if _REVERSE_SHELL.search(cmdline):
            yield Finding(
                rule="reverse_shell",
                severity=Severity.CRITICAL,
                message=f"reverse shell command line: {cmdline[:200]} ({who})",
                attributes=attributes,
                techniques=("T1059.004",),
            )
        if _DOWNLOAD_AND_RUN.search(cmdline):
            yield Finding(
                rule="download_and_execute",
                severity=Severity.HIGH,
                message=f"download piped into a shell: {cmdline[:200]} ({who})",
                attributes=attributes,
                techniques=("T1105", "T1059.004"),
            )
        if _name(process.exe) in SHELLS and _name(process.parent_exe) in self.services:
            yield Finding(
                rule="shell_from_network_service",
                severity=Severity.CRITICAL,
                message=f"{_name(process.parent_exe)} started a shell: {cmdline[:200]} ({who})",
                attributes={**attributes, "parent_exe": process.parent_exe},
                techniques=("T1505.003",),
            )
        if _BASE64_TO_SHELL.search(cmdline):
            yield Finding(
                rule="base64_payload_to_shell",
                severity=Severity.HIGH,
                message=f"base64-decoded payload piped to a shell: {cmdline[:200]} ({who})",
                attributes=attributes,
                techniques=("T1140", "T1059.004"),
            )
