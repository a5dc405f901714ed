"""Our events as the fields Sigma rules name (the Sysmon for Linux field names).

Each event kind maps to one Sigma logsource category. A field we cannot fill is absent (None),
never an empty string, so that ``Image|endswith: ...`` cannot match a process whose executable
is unknown, while ``Image: null`` can.
"""

from __future__ import annotations

from typing import Any

from agent_host.sdk import Event, FileAction, NetworkAction, ProcessAction

PROCESS_CREATION = "process_creation"
FILE_EVENT = "file_event"
NETWORK_CONNECTION = "network_connection"
_UNSET_AUID = 2**32 - 1


def _text(value: str) -> str | None:
    return value or None


def sigma_fields(event: Event) -> tuple[str, dict[str, Any]] | None:
    """(logsource category, fields) for ``event``, or None if no category covers it."""
    kind = event.WhichOneof("kind")
    if kind == "process":
        p = event.process
        if p.action != ProcessAction.START:
            return None
        return PROCESS_CREATION, {
            "Image": _text(p.exe),
            "CommandLine": _text(" ".join(p.cmdline)),
            "ParentImage": _text(p.parent_exe),
            "ParentCommandLine": _text(" ".join(p.parent_cmdline)),
            "User": _text(p.user),
            "CurrentDirectory": _text(p.cwd),
            "ProcessId": p.pid,
            "ParentProcessId": p.ppid or None,
            # Sysmon for Linux's LogonId is the login uid; unset (-1) is no login at all.
            "LogonId": p.auid if p.origin == "audit" and p.auid != _UNSET_AUID else None,
        }
    if kind == "file":
        f = event.file
        if f.action not in (FileAction.CREATED, FileAction.MODIFIED, FileAction.MOVED) or f.is_dir:
            return None
        # A rename creates a file under its new name, as Sysmon's FileCreate reports it.
        target = f.dest_path if f.action == FileAction.MOVED else f.path
        return FILE_EVENT, {
            "TargetFilename": _text(target),
            "Image": _text(f.exe),
            "ProcessId": f.pid or None,
        }
    if kind == "network":
        n = event.network
        if n.action != NetworkAction.CONNECT:
            return None
        return NETWORK_CONNECTION, {
            "Image": _text(n.exe),
            "ProcessId": n.pid or None,
            "Protocol": _text(n.protocol),
            "Initiated": "true",
            "SourceIp": _text(n.local_address),
            "SourcePort": n.local_port or None,
            "DestinationIp": _text(n.remote_address),
            "DestinationPort": n.remote_port or None,
            "DestinationHostname": _text(n.remote_hostname),
        }
    return None
