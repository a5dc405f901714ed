"""SIGHUP's config file: read again, flags still over it, and which changes apply now.

A running host takes a changed setting at once where that cannot lose an event or weaken a
running sandbox: the plugin folders, the findings file, the log level, and what decides which
content may run (signature policy, trusted keys, what manifests may be granted, shadow runs).
A plugin the new policy refuses is stopped by the reload that follows. Every other setting
(sensors, batching, the state folder, the sandbox mode, metrics, export) is about what is
already built and running; a change to it is logged by name and takes effect at the next
start, as nginx and osquery do with the settings they cannot apply live.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from agent_host.cli import config_file
from agent_host.cli.options import RunOptions
from agent_host.cli.parser import build_parser, command_parser
from agent_host.errors import ConfigFileError

log = structlog.get_logger("agent_host")

#: Settings applied by a reload, by their flag's destination.
LIVE: Final = frozenset(
    {
        "plugins",
        "findings",
        "suppress",
        "allowlist",
        "log_level",
        "signatures",
        "trusted_key",
        "allow_network",
        "allow_exec",
        "shadow",
        "shadow_events",
        "shadow_seconds",
    }
)
#: Settings of the content policy: a change to any of them re-admits every running plugin.
POLICY: Final = frozenset({"signatures", "trusted_key", "allow_network", "allow_exec"})


@dataclass(frozen=True, slots=True)
class Reread:
    #: The settings the host now runs with: the live ones as the file and flags say now, the
    #: others as they were at start.
    options: RunOptions
    #: Live settings that changed.
    applied: frozenset[str]
    #: Settings that changed but wait for the next start.
    deferred: frozenset[str]


def given_flags(argv: list[str]) -> set[str]:
    """The settings ``argv`` names on the command line (by destination)."""
    parser = build_parser()
    run_parser = command_parser(parser, "run")
    settings = config_file.settings_of(run_parser)
    for action in settings.values():
        action.default = argparse.SUPPRESS  # a fresh parser: only what argv names is set
    return set(vars(parser.parse_args(argv))) & set(settings)


def layered(argv: list[str], settings: dict[str, Any]) -> argparse.Namespace:
    """The arguments of ``argv``, each setting it does not name taken from ``settings``: flags
    override the file (a repeated flag such as ``--plugins`` replaces the file's list, it does
    not add to it)."""
    args = build_parser().parse_args(argv)
    given = given_flags(argv)
    for dest, value in settings.items():
        if dest not in given:
            setattr(args, dest, value)
    return args


def first_read(argv: list[str], path: Path | None) -> RunOptions:
    """The arguments of ``run`` at start: the config file at ``path`` (if any) under the flags.

    Raises:
        ConfigFileError: listing every mistake of the file.
    """
    if path is None:
        args = build_parser().parse_args(argv)
    else:
        settings, mistakes = config_file.read(path, command_parser(build_parser(), "run"))
        if mistakes:
            raise ConfigFileError(mistakes)
        args = layered(argv, settings)
    return RunOptions.from_args(args).replace(argv=tuple(argv), config_file=path)


def reread(options: RunOptions) -> Reread | None:
    """The config file read again under the flags of ``options.argv``; None when there is no
    file or it has mistakes (each logged; the host keeps every setting as it was)."""
    path = options.config_file
    if path is None:
        return None
    run_parser = command_parser(build_parser(), "run")
    settings, mistakes = config_file.read(path, run_parser)
    for mistake in mistakes:
        log.error("config file not reloaded", mistake=str(mistake))
    if mistakes:
        return None
    now = RunOptions.from_args(layered(list(options.argv), settings))
    changes: dict[str, Any] = {}
    deferred = set()
    for dest in config_file.settings_of(run_parser):
        if getattr(now, dest) == getattr(options, dest):
            continue
        if dest in LIVE:
            changes[dest] = getattr(now, dest)
        else:
            deferred.add(dest)
    applied = set(changes)
    if deferred:
        log.warning(
            "config file settings changed that take effect at the next start",
            settings=" ".join(sorted(deferred)),
        )
    if applied:
        log.info("config file settings applied", settings=" ".join(sorted(applied)))
    return Reread(options.replace(**changes), frozenset(applied), frozenset(deferred))
