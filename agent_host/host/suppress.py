"""Suppressions: findings an operator has judged benign, dropped by the host and counted.

A suppression names any of a plugin, a rule id, the acting process, a path and a user; a
finding matches when every name given matches (globs, as fnmatch; several globs joined by
``|`` match when any does). The process, path and user are read from the finding's attributes
under the names the bundled plugins and Sigma use (``Image``/``exe``, ``TargetFilename``/
``path``, ``User``/``user``): a plugin can only keep its own findings out by them, which it
could do anyway by not reporting. Each name is compiled once into one regular expression.

Suppressed findings are never written, and never silent: each plugin's count is in its stats,
each suppression's in ``Suppressions.hits``, both in the summary.

The **allowlist** is a set of suppressions that ships with agent-host, on unless turned off
(``allowlist = false``). It covers only what package managers legitimately do: write files
where packages install them (units, cron files, libraries, programs, their configuration),
which is what persistence rules look for. It never covers a finding about the package manager
being abused: a finding about a process (the package manager started with a hook, asked to
install nmap or to remove a package; a shell or a network tool started under it: their
findings carry no written path), a file written anywhere else (``/tmp``, a home, ``/root``,
``/etc/sudoers.d``), or a finding whose rule names the package manager itself. It costs this:
a malicious package's files, written by the package manager where packages go, are not
reported by those rules; what its scripts then run is (they are other processes).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from agent_host.protocol import Finding

_FIELDS: Final = ("plugin", "rule", "process", "path", "user", "reason")
_ATTRIBUTES: Final = {
    "process": ("Image", "exe"),
    "path": ("TargetFilename", "path"),
    "user": ("User", "user"),
}


def _compiled(globs: str) -> re.Pattern[str] | None:
    """One expression for ``a|b|c`` (fnmatch globs, any of which matches); None for ""."""
    if not globs:
        return None
    return re.compile("|".join(fnmatch.translate(glob) for glob in globs.split("|")))


@dataclass(frozen=True, slots=True)
class Suppression:
    plugin: str = ""
    rule: str = ""
    process: str = ""
    path: str = ""
    user: str = ""
    reason: str = ""
    #: Names (lowercase words) that, in a finding's rule, title or message, make it a finding
    #: about that program, which this entry never covers (the allowlist's; not configurable).
    spares: tuple[str, ...] = ()
    _patterns: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False
    )
    _spared: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = []
        for name in _FIELDS[:5]:
            compiled = _compiled(getattr(self, name))
            if compiled is not None:
                patterns.append((name, compiled))
        object.__setattr__(self, "_patterns", tuple(patterns))
        spared = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, self.spares)) + r")\b", re.IGNORECASE)
            if self.spares
            else None
        )
        object.__setattr__(self, "_spared", spared)

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> Suppression:
        """From ``{"rule": ..., "process": ...}``; raises ValueError naming what is wrong."""
        unknown = sorted(set(table) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; known: {', '.join(_FIELDS)}")
        if not all(isinstance(v, str) for v in table.values()):
            raise ValueError("every value must be a string")
        plugin, rule, process, path, user, reason = (str(table.get(k, "")) for k in _FIELDS)
        made = cls(plugin, rule, process, path, user, reason)
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
        attributes = finding.attributes
        for name, pattern in self._patterns:
            if name == "plugin":
                found = pattern.match(finding.plugin) is not None
            elif name == "rule":
                found = pattern.match(finding.rule) is not None
            else:
                found = any(
                    pattern.match(attributes[key]) is not None
                    for key in _ATTRIBUTES[name]
                    if key in attributes
                )
            if not found:
                return False
        if self._spared is not None:
            about = " ".join((finding.rule, finding.message, attributes.get("title", "")))
            if self._spared.search(about):
                return False
        return True

    def __str__(self) -> str:
        named = [f"{k}={getattr(self, k)}" for k in _FIELDS[:5] if getattr(self, k)]
        return ",".join(named)


#: The package managers (and the tools they run to install: ldconfig, update-alternatives).
PACKAGE_MANAGERS: Final = (
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
#: Where packages install files: units and timers, cron files, libraries, programs, their
#: configuration and data, and the package databases. Not /etc/sudoers.d (SigmaHQ's rule
#: about it spares one file of dpkg's alone), nor any folder a user can write.
PACKAGE_PATHS: Final = (
    "/etc/systemd/system/*",
    "/lib/systemd/*",
    "/usr/lib/systemd/*",
    "/etc/cron.d/*",
    "/etc/cron.daily/*",
    "/etc/cron.hourly/*",
    "/etc/cron.weekly/*",
    "/etc/cron.monthly/*",
    "/etc/init.d/*",
    "/etc/pam.d/*",
    "/etc/ld.so.*",
    "/etc/alternatives/*",
    "/etc/apt/*",
    "/etc/dpkg/*",
    "/etc/yum.repos.d/*",
    "/usr/bin/*",
    "/usr/sbin/*",
    "/usr/lib/*",
    "/usr/lib64/*",
    "/usr/libexec/*",
    "/usr/share/*",
    "/lib/*",
    "/lib64/*",
    "/bin/*",
    "/sbin/*",
    "/var/lib/dpkg/*",
    "/var/lib/rpm/*",
    "/var/lib/apt/*",
    "/var/cache/apt/*",
    "/var/lib/snapd/*",
    "/snap/*",
)
#: The words that name a package manager in a rule: a rule about one is never allowlisted.
_PACKAGE_MANAGER_NAMES: Final = (
    "apt",
    "apt-get",
    "dpkg",
    "rpm",
    "dnf",
    "yum",
    "zypper",
    "snap",
    "snapd",
    "ldconfig",
    "update-alternatives",
    "unattended-upgrade",
    "package",
    "packages",
)

#: The allowlist (the ``allowlist`` setting): what package managers write where packages go,
#: and executables written to /tmp by a compiler, assembler and linker for the one rule about
#: that.
ALLOWLIST: Final = (
    Suppression(
        process="|".join(PACKAGE_MANAGERS),
        path="|".join(PACKAGE_PATHS),
        reason="package manager",
        spares=_PACKAGE_MANAGER_NAMES,
    ),
    # A build writes object files and executables wherever it runs, /tmp included.
    Suppression(
        plugin="yara_scan",
        rule="yara.elf_in_world_writable_folder",
        process="|".join(
            (
                "/usr/bin/as",
                "/usr/bin/*-linux-gnu-as",
                "/usr/bin/ld*",
                "/usr/bin/*-linux-gnu-ld*",
                "/usr/bin/*gcc*",
                "/usr/bin/*g++*",
                "/usr/bin/clang*",
                "/usr/lib/gcc/*",
            )
        ),
        reason="build tool",
    ),
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
