"""Suppressions: findings an operator has judged benign, dropped by the host and counted.

A suppression names any of a plugin, a rule id, the acting process, a path and a user; a
finding matches when every name given matches (globs, as fnmatch). The process, path and user
are read from the finding's attributes under the names the bundled plugins and Sigma use
(``Image``/``exe``, ``TargetFilename``/``path``, ``User``/``user``): a plugin can only keep its
own findings out by them, which it could do anyway by not reporting.

Suppressed findings are never written, and never silent: each plugin's count is in its stats,
each suppression's in ``Suppressions.hits``, both in the summary.

The **allowlist** is a set of suppressions that ships with agent-host, on unless turned off
(``allowlist = false``): what package managers do as their ordinary work (write units, cron
files, PAM and sudoers files, libraries) is what persistence rules look for. It costs this: a
malicious package's files, written by the package manager itself, are not reported by those
rules; what its scripts then run is (they are other processes).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from agent_host.protocol import Finding

_FIELDS: Final = ("plugin", "rule", "process", "path", "user", "reason")
_ATTRIBUTES: Final = {
    "process": ("Image", "exe"),
    "path": ("TargetFilename", "path"),
    "user": ("User", "user"),
}


@dataclass(frozen=True, slots=True)
class Suppression:
    plugin: str = ""
    rule: str = ""
    process: str = ""
    path: str = ""
    user: str = ""
    reason: str = ""

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> Suppression:
        """From ``{"rule": ..., "process": ...}``; raises ValueError naming what is wrong."""
        unknown = sorted(set(table) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; known: {', '.join(_FIELDS)}")
        if not all(isinstance(v, str) for v in table.values()):
            raise ValueError("every value must be a string")
        made = cls(**{k: str(v) for k, v in table.items()})
        if not any((made.plugin, made.rule, made.process, made.path, made.user)):
            raise ValueError("names nothing to match: give a plugin, rule, process, path or user")
        return made

    @classmethod
    def parse(cls, text: str) -> Suppression:
        """From the flag's ``rule=ID,process=/usr/bin/pip*,reason=builds``."""
        table: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"{part!r} is not KEY=VALUE")
            table[key.strip()] = value.strip()
        return cls.from_table(table)

    def matches(self, finding: Finding) -> bool:
        if self.plugin and not fnmatch.fnmatchcase(finding.plugin, self.plugin):
            return False
        if self.rule and not fnmatch.fnmatchcase(finding.rule, self.rule):
            return False
        for name in ("process", "path", "user"):
            pattern = getattr(self, name)
            if pattern and not any(
                fnmatch.fnmatchcase(finding.attributes[key], pattern)
                for key in _ATTRIBUTES[name]
                if key in finding.attributes
            ):
                return False
        return True

    def __str__(self) -> str:
        named = [f"{k}={getattr(self, k)}" for k in _FIELDS[:5] if getattr(self, k)]
        return ",".join(named)


#: Package managers by executable, and the compiler, assembler and linker for the one rule about
#: executables written to /tmp (the ``allowlist`` setting).
ALLOWLIST: Final = tuple(
    Suppression(process=exe, reason="package manager")
    for exe in (
        "/usr/bin/dpkg",
        "/usr/bin/apt",
        "/usr/bin/apt-get",
        "/usr/lib/apt/methods/*",
        "/usr/bin/unattended-upgrade",
        "/usr/bin/update-alternatives",
        "/usr/sbin/ldconfig*",
        "/usr/bin/rpm",
        "/usr/bin/dnf*",
        "/usr/bin/yum",
        "/usr/bin/zypper",
        "/usr/lib/snapd/*",
        "/usr/bin/snap",
    )
) + tuple(
    # A build writes object files and executables wherever it runs, /tmp included.
    Suppression(
        plugin="yara_scan",
        rule="yara.elf_in_world_writable_folder",
        process=exe,
        reason="build tool",
    )
    for exe in (
        "/usr/bin/as",
        "/usr/bin/*-linux-gnu-as",
        "/usr/bin/ld*",
        "/usr/bin/*-linux-gnu-ld*",
        "/usr/bin/*gcc*",
        "/usr/bin/*g++*",
        "/usr/bin/clang*",
        "/usr/lib/gcc/*",
    )
)


class Suppressions:
    """The operator's suppressions (and the allowlist) in order; counts what each kept out."""

    def __init__(self, entries: Iterable[Suppression] = (), allowlist: bool = True) -> None:
        self.entries = (*entries, *(ALLOWLIST if allowlist else ()))
        self.hits: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def suppressed(self, finding: Finding) -> bool:
        for entry in self.entries:
            if entry.matches(finding):
                self.hits[str(entry)] += 1
                return True
        return False
