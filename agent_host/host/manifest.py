"""Plugin manifests: read and validate ``plugin.toml`` without importing any plugin code.

The host decides everything about a plugin (its name, what it subscribes to, its limits) from the
manifest alone; the plugin's code is imported only inside its worker.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent_host.errors import ManifestError
from agent_host.protocol import EVENT_KINDS, EventKind
from agent_host.toml_lines import line_of

MANIFEST_NAME: Final = "plugin.toml"
_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ENTRYPOINT_PATTERN: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TABLES: Final = ("plugin", "limits", "permissions", "config")
_PLUGIN_KEYS: Final = {"name", "version", "entrypoint", "subscribe", "description"}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one worker may use. Defaults suit a detection that keeps modest state."""

    batch_deadline_s: float = 5.0
    memory_mb: int = 512
    #: CPU used while idle (no batch in hand), in percent of one core, over cpu_window_s.
    cpu_percent: float = 50.0
    cpu_window_s: float = 10.0
    #: Cores the worker and all it starts may use at any time, a batch in hand or not: the
    #: kernel's bound (a cpu cgroup), where the machine has one.
    cpu_cores: float = 1.0
    open_files: int = 256
    processes: int = 64
    max_findings_per_event: int = 100

    @classmethod
    def checked(cls, table: Mapping[str, Any], mistakes: Mistakes) -> Limits:
        known = set(cls.__dataclass_fields__)
        mistakes.unknown(table, known, "limits", "limit")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                mistakes.add(f"must be a number, got {value!r}", f"limits.{key}")
            elif not 0 < value <= _LIMIT_MAX[key]:  # nan and inf fail here too
                mistakes.add(
                    f"must be a positive number, at most {_LIMIT_MAX[key]}, got {value!r}",
                    f"limits.{key}",
                )
            else:
                # Keep each limit's own type: a count stays an int, a duration a float.
                default = cls.__dataclass_fields__[key].default
                values[key] = float(value) if isinstance(default, float) else int(value)
        return cls(**values)


#: The largest value each limit may take: beyond it a limit means nothing (and a number the
#: kernel's interfaces cannot hold would fail the worker's start, not the manifest's check).
_LIMIT_MAX: Final = {
    "batch_deadline_s": 86_400,
    "memory_mb": 1 << 20,
    "cpu_percent": 100_000,
    "cpu_window_s": 86_400,
    "cpu_cores": 1024,
    "open_files": 1 << 20,
    "processes": 1 << 22,
    "max_findings_per_event": 1_000_000,
}

#: Never grantable: the whole filesystem, and the kernel's own interfaces.
_UNGRANTABLE: Final = frozenset({"/", "/proc", "/sys", "/dev", "/run"})


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a plugin needs beyond the default nothing, as its ``[permissions]`` table says.

    Granted only as far as the operator allows (``host.caps``), and still as the worker's own
    unprivileged user: a file its owner keeps to itself stays unreadable.
    """

    #: Files and folders it may read (read-only, at their own paths), besides its own folder.
    read: tuple[str, ...] = ()
    #: The host's network (no network namespace) and TCP/UDP sockets.
    network: bool = False
    #: Executing programs (execve).
    exec: bool = False

    @classmethod
    def checked(cls, table: Mapping[str, Any], mistakes: Mistakes) -> Permissions:
        mistakes.unknown(table, {"read", "network", "exec"}, "permissions", "permission")
        flags = {}
        for key in ("network", "exec"):
            flags[key] = table.get(key, False)
            if not isinstance(flags[key], bool):
                mistakes.add("must be true or false", f"permissions.{key}")
                flags[key] = False
        read = table.get("read", [])
        if not isinstance(read, list) or not all(isinstance(p, str) for p in read):
            mistakes.add("must be a list of paths", "permissions.read")
            read = []
        granted = []
        for entry in read:
            problem = _ungrantable(entry)
            if problem:
                mistakes.add(problem, "permissions.read")
            else:
                granted.append(os.path.normpath(entry))
        return cls(tuple(granted), network=flags["network"], exec=flags["exec"])


def _ungrantable(entry: str) -> str | None:
    """Why ``entry`` of ``permissions.read`` cannot be granted, or None."""
    if not entry.startswith("/") or ".." in Path(entry).parts:
        return f"{entry!r} is not an absolute path"
    normal = os.path.normpath(entry)
    if normal in _UNGRANTABLE or normal.startswith(("/proc/", "/sys/", "/dev/")):
        return f"{entry!r} cannot be granted"
    return None


class Mistakes:
    """Every mistake found in one manifest, so that its author fixes them in one go, each
    named with the file, its line (found in the file's text) and its key."""

    def __init__(self, path: Path, text: str = "") -> None:
        self.path = path
        self._text = text
        self.found: list[ManifestError] = []

    def add(self, message: str, key: str | None = None) -> None:
        self.found.append(ManifestError(self.path, message, key=key, line=self._line_of(key)))

    def unknown(self, table: Mapping[str, Any], known: set[str], where: str, what: str) -> None:
        """Each key of ``table`` not in ``known``, with the closest known name."""
        for key in table:
            if key in known:
                continue
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            name = f"{where}.{key}" if where else key
            self.add(f"unknown {what}; {hint}known: {', '.join(sorted(known))}", name)

    def raise_any(self) -> None:
        if self.found:
            raise ManifestError.several(self.found)

    def _line_of(self, key: str | None) -> int:
        return line_of(self._text, key) if key and self._text else 0


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated plugin manifest."""

    name: str
    version: str
    entrypoint: str
    subscribe: frozenset[EventKind]
    directory: Path
    limits: Limits = field(default_factory=Limits)
    permissions: Permissions = field(default_factory=Permissions)
    config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def config_json(self) -> str:
        """The [config] table as JSON; TOML dates and times become ISO strings."""
        return json.dumps(self.config, default=str, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and validate the manifest at ``path``; raise ManifestError naming the problem."""
        try:
            text = path.read_bytes().decode()
            data = tomllib.loads(text)
        except OSError as exc:
            raise ManifestError(path, f"cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(path, f"not valid TOML: {exc}") from exc
        except UnicodeDecodeError:
            raise ManifestError(path, "not valid TOML: not UTF-8 text") from None
        except RecursionError:
            raise ManifestError(path, "not valid TOML: nested too deeply") from None
        return cls.from_dict(path, data, text)

    @classmethod
    def from_dict(cls, path: Path, data: Mapping[str, Any], text: str = "") -> Manifest:
        """The manifest in ``data``; ManifestError with every mistake in it."""
        mistakes = Mistakes(path, text)
        plugin = data.get("plugin")
        if not isinstance(plugin, dict):
            mistakes.add("missing [plugin] table")
        mistakes.unknown(data, set(_TABLES), "", "table")
        name = version = entrypoint = ""
        subscribe: list[EventKind] = []
        if isinstance(plugin, dict):
            mistakes.unknown(plugin, _PLUGIN_KEYS, "plugin", "key")
            name, version, entrypoint = (
                _required_str(plugin, key, mistakes) for key in ("name", "version", "entrypoint")
            )
            _check_plugin(path, plugin, mistakes, name=name, entrypoint=entrypoint)
            subscribe = plugin.get("subscribe", [])
        tables: dict[str, dict[str, Any]] = {}
        for table in ("limits", "permissions", "config"):
            tables[table] = data.get(table, {})
            if not isinstance(tables[table], dict):
                mistakes.add("must be a table", table)
                tables[table] = {}
        try:  # what each worker is handed: it must be expressible
            json.dumps(tables["config"], default=str)
        except (RecursionError, ValueError) as exc:
            mistakes.add(f"cannot be handed to the plugin: {exc}", "config")
        limits = Limits.checked(tables["limits"], mistakes)
        permissions = Permissions.checked(tables["permissions"], mistakes)
        mistakes.raise_any()
        description = plugin.get("description", "") if isinstance(plugin, dict) else ""
        return cls(
            name=name,
            version=version,
            entrypoint=entrypoint,
            subscribe=frozenset(subscribe),
            directory=path.parent.resolve(),
            limits=limits,
            permissions=permissions,
            config=tables["config"],
            description=description if isinstance(description, str) else "",
        )


def _check_plugin(
    path: Path, plugin: Mapping[str, Any], mistakes: Mistakes, *, name: str, entrypoint: str
) -> None:
    """The ``[plugin]`` table's name, entrypoint and subscriptions."""
    if name and not _NAME_PATTERN.match(name):
        mistakes.add(
            f"{name!r} is not a valid name (lowercase letters, digits, underscores; "
            "starting with a letter)",
            "plugin.name",
        )
    if entrypoint and not _ENTRYPOINT_PATTERN.match(entrypoint):
        mistakes.add(f"{entrypoint!r} is not of the form 'module:Class'", "plugin.entrypoint")
    elif entrypoint:
        module = entrypoint.split(":", 1)[0]
        if _module_file(path.parent, module) is None:
            mistakes.add(f"module {module!r} not found in {path.parent}", "plugin.entrypoint")
    subscribe = plugin.get("subscribe")
    if (
        not isinstance(subscribe, list)
        or not subscribe
        or not all(isinstance(k, str) and k in EVENT_KINDS for k in subscribe)
    ):
        mistakes.add(
            f"must be a non-empty list of {', '.join(EVENT_KINDS)}; got {subscribe!r}",
            "plugin.subscribe",
        )


def _required_str(table: Mapping[str, Any], key: str, mistakes: Mistakes) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        mistakes.add("missing or not a non-empty string", f"plugin.{key}")
        return ""
    return value.strip()


def _module_file(directory: Path, module: str) -> Path | None:
    """Where ``module`` would be found in the plugin directory, without importing it."""
    base = directory.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # a name longer than the file system allows, say: not there
            continue
    return None


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a plugins directory holds: the usable manifests and the errors of the others."""

    manifests: list[Manifest]
    errors: list[ManifestError]


def unsafe_file(folder: Path) -> str | None:
    """Why ``folder`` (or anything in it) may not be trusted, or None: everything in it must be
    owned by root or by this agent's user, and writable by no one else (as osquery asks of its
    extensions): a file another user can change is code that user can run in the agent."""
    trusted_users, trusted_groups = {0, os.geteuid()}, {0, os.getegid()}
    for path in [folder, *sorted(folder.rglob("*"))]:
        try:
            info = path.lstat()
        except OSError as exc:
            return f"{path}: cannot be read ({exc.strerror})"
        if stat.S_ISLNK(info.st_mode):
            continue  # what counts is what it points to, which the content copy resolves
        if info.st_uid not in trusted_users:
            return f"{path} is owned by uid {info.st_uid}, not by root or this agent's user"
        if info.st_mode & stat.S_IWOTH:
            return f"{path} is writable by every user"
        if info.st_mode & stat.S_IWGRP and info.st_gid not in trusted_groups:
            return f"{path} is writable by group {info.st_gid}"
    return None


def discover(plugins_dirs: Path | Sequence[Path]) -> Discovery:
    """Read every ``*/plugin.toml`` under each folder of ``plugins_dirs``; never imports plugin
    code.

    A bad manifest, or a plugin folder another user could change, becomes an entry in
    ``errors`` and the others still load. Two plugins with the same name are an error for the
    second one found (folders in the order given, each in path order).
    """
    folders = [plugins_dirs] if isinstance(plugins_dirs, Path) else list(plugins_dirs)
    manifests: list[Manifest] = []
    errors: list[ManifestError] = []
    seen: dict[str, Path] = {}
    for path in [p for folder in folders for p in sorted(folder.glob(f"*/{MANIFEST_NAME}"))]:
        unsafe = unsafe_file(path.parent)
        if unsafe is not None:
            errors.append(ManifestError(path, f"refused: {unsafe}"))
            continue
        try:
            manifest = Manifest.load(path)
        except ManifestError as exc:
            errors.append(exc)
            continue
        if manifest.name in seen:
            errors.append(
                ManifestError(
                    path,
                    f"name {manifest.name!r} is already used by {seen[manifest.name]}",
                    key="plugin.name",
                )
            )
            continue
        seen[manifest.name] = path
        manifests.append(manifest)
    return Discovery(manifests, errors)
