"""Detects programs executed from world-writable folders.

Droppers and miners commonly land in /tmp, /dev/shm or /var/tmp because any user can write there;
legitimate software is almost never executed from them (MITRE ATT&CK T1036: masquerading in
writable paths; SigmaHQ's "Potentially Suspicious Execution From Tmp Folder").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from agent_host.sdk import Event, Finding, Plugin, Severity


class SuspiciousExec(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        self.prefixes = tuple(config.get("writable_dirs", ["/tmp/", "/dev/shm/", "/var/tmp/"]))

    def on_event(self, event: Event) -> Iterator[Finding]:
        process = event.process
        if process.action != process.START:
            return
        if process.exe.startswith(self.prefixes):
            yield Finding(
                rule="exec_from_writable_dir",
                severity=Severity.HIGH,
                message=f"{process.exe} executed from a world-writable folder "
                f"(pid {process.pid}, user {process.user or process.uid}, "
                f"parent {process.parent_exe or process.ppid})",
                attributes={"exe": process.exe, "cmdline": " ".join(process.cmdline)},
                techniques=("T1036",),
            )
