"""Paths the user gives the command, checked before anything starts.

Each check raises ``UsageError`` naming the flag, the path and the reason (the operating
system's own words), so that a missing folder or an unwritable file is one line, not a
traceback halfway through a run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from agent_host.errors import UsageError
from agent_host.host.store import StateStore

#: The plugins that install with the package.
BUNDLED_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
#: The operator's own plugins, beside the bundled ones by default.
SYSTEM_PLUGINS = Path("/etc/agent-host/plugins")


def default_plugin_dirs() -> list[Path]:
    """The bundled plugins, and /etc/agent-host/plugins if there is one; never a folder
    relative to where the agent was started (a writable start folder would let anyone run code
    in the agent)."""
    return [BUNDLED_PLUGINS, *([SYSTEM_PLUGINS] if SYSTEM_PLUGINS.is_dir() else [])]


def plugin_dirs(given: Sequence[Path] | None) -> list[Path]:
    """The plugin folders given (``--plugins``, repeatable), else the defaults."""
    folders = list(given or default_plugin_dirs())
    for folder in folders:
        if not folder.is_dir():
            raise UsageError("--plugins", f"not a folder: {folder}")
    return folders


def appendable(flag: str, path: Path | None) -> Path | None:
    """``path`` if it can be opened for appending (it is created if missing)."""
    if path is None:
        return None
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(flag, f"cannot open {path}: {exc.strerror}") from None
    return path


def open_write(flag: str, path: Path) -> IO[bytes]:
    """``path`` opened for writing (bytes), replacing what it held."""
    try:
        return path.open("wb")
    except OSError as exc:
        raise UsageError(flag, f"cannot write {path}: {exc.strerror}") from None


def writable_file(flag: str, path: Path) -> None:
    """Fail now, not at the end of a run, if ``path`` cannot be written then."""
    if path.is_dir():
        raise UsageError(flag, f"is a folder: {path}")
    if not path.parent.is_dir():
        raise UsageError(flag, f"folder does not exist: {path.parent}")


def open_state(flag: str, directory: Path | None) -> StateStore:
    """The state store in ``directory``, or a usage error naming the flag."""
    try:
        return StateStore(directory)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(flag, f"cannot use {directory}: {why}") from None
