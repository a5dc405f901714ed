"""Scans created and modified files with YARA.

Rules are compiled once at start (with the external variable ``filepath``, so that a rule can
ask where a file is). Each scan has a timeout; files over ``max_file_mb`` are skipped; files that
vanish or cannot be read before the scan are counted and skipped, never an error. A file is
scanned again only when its size or modification time changed.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yara

from agent_host.sdk import Event, FileAction, Finding, Plugin, Severity, open_file

HERE = Path(__file__).resolve().parent
#: What makes a file worth a scan: new content, or content under a new name.
SCANNED = (FileAction.CREATED, FileAction.MODIFIED, FileAction.MOVED)
SEVERITY = {
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}


class YaraScan(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        sources: dict[str, str] = {}
        for folder in config.get("rule_dirs", ["rules"]):
            for path in sorted((HERE / folder).glob("*.yar")):
                sources[path.stem] = str(path)
        self.rules = yara.compile(filepaths=sources, externals={"filepath": ""})
        self.timeout = int(config.get("scan_timeout_s", 5))
        self.max_bytes = int(float(config.get("max_file_mb", 32)) * 1024 * 1024)
        self.skipped: Counter[str] = Counter()
        self.seen: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.log.info("yara rules compiled: %d files", len(sources))

    def _skip(self, why: str, path: str) -> None:
        # A file gone before it could be scanned is ordinary on a busy machine: counted, said
        # once at the end, and each one only at debug level.
        self.skipped[why] += 1
        self.log.debug("not scanned (%s, %d so far): %s", why, self.skipped[why], path)

    def on_stop(self) -> None:
        if self.skipped:
            counts = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
            self.log.info("files not scanned: %s", counts)

    def on_event(self, event: Event) -> Iterator[Finding]:
        file = event.file
        if file.is_dir or file.action not in SCANNED or stat_module.S_ISLNK(file.mode):
            return  # a symbolic link is not content: what it points to is scanned where it is
        path = file.dest_path if file.action == FileAction.MOVED else file.path
        try:
            # Through the host's broker: this worker's own user may not open the file itself.
            with open_file(path) as f:
                stat = os.fstat(f.fileno())
                if stat.st_size > self.max_bytes:
                    self._skip("too large", path)
                    return
                key = (path, stat.st_size, stat.st_mtime_ns)
                if key in self.seen:
                    return  # this very content was scanned already
                data = f.read(self.max_bytes + 1)
        except OSError:
            self._skip("gone or unreadable", path)
            return
        if len(data) > self.max_bytes:
            self._skip("too large", path)
            return
        self.seen[key] = None
        if len(self.seen) > 4096:
            self.seen.popitem(last=False)
        try:
            matches = self.rules.match(
                data=data, timeout=self.timeout, externals={"filepath": path}
            )
        except yara.TimeoutError:
            self._skip("scan timed out", path)
            return
        except yara.Error:
            self._skip("gone or unreadable", path)
            return
        for match in matches:
            meta = match.meta
            severity = SEVERITY.get(str(meta.get("severity", "medium")), Severity.MEDIUM)
            context = {}
            if match.rule in PACKAGED_ELF_RULES and not _downloader(file.exe):
                environment = python_environment(path)
                if environment is not None:
                    # pip unpacks compiled extensions (.so) into a virtualenv's site-packages:
                    # an ELF there is a package's, said at INFO. Run from a world-writable
                    # folder it is still caught, at its severity, by the exec rules.
                    severity = Severity.INFO
                    context = {"context": f"inside the Python environment {environment}"}
            yield Finding(
                rule=f"yara.{match.rule}",
                severity=severity,
                message=f"{meta.get('description', match.rule)}: {path}",
                attributes={
                    "path": path,
                    "size": str(stat.st_size),
                    "strings": ", ".join(s.identifier for s in match.strings)[:200],
                    # Who wrote it, when the sensor knows: what a suppression names.
                    **({"exe": file.exe} if file.exe else {}),
                    **context,
                },
                techniques=(str(meta["technique"]),) if "technique" in meta else (),
            )


#: Rules about an ELF's place that a package manager's own tree explains.
PACKAGED_ELF_RULES = frozenset({"elf_in_world_writable_folder"})
#: Writers whose file is a download, whatever tree it lands in.
DOWNLOADERS = frozenset({"curl", "wget", "aria2c", "ftp", "tftp", "scp", "sftp", "nc", "ncat"})
_SITE = re.compile(r"^(?P<root>/.+?)/lib(?:64)?/python3(?:\.\d+)?/(?:site|dist)-packages/[^/]")


def _downloader(exe: str) -> bool:
    return os.path.basename(exe) in DOWNLOADERS


def python_environment(path: str) -> str | None:
    """The virtual environment whose package tree holds ``path`` (its root has the
    ``pyvenv.cfg`` every venv and virtualenv writes), or None. Read through the broker."""
    found = _SITE.match(path)
    if found is None or ".." in path.split("/"):
        return None
    root = found.group("root")
    try:
        with open_file(f"{root}/pyvenv.cfg") as marker:
            if not stat_module.S_ISREG(os.fstat(marker.fileno()).st_mode):
                return None
    except OSError:
        return None
    return root
