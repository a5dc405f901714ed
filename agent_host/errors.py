"""The exceptions agent-host raises, as one small tree.

    AgentHostError
    ├── UsageError           a flag or path the command cannot use  (what)
    ├── ManifestError        a plugin.toml that cannot be used      (path, key)
    ├── ContentError         a plugin folder's file the host will not take (path)
    ├── RecordingError       an event line that cannot be parsed    (path, line)
    ├── ConfigError          a bad host setting                     (key)
    ├── ConfigFileError      mistakes of the config file            (path, line, key)
    ├── SandboxUnavailableError   a strict sandbox layer the machine lacks (layer)
    └── ProtocolError        a worker broke the session protocol    (plugin)

Each carries the structured fields that name the thing at fault, and its message says what to fix.
Foreign errors (tomllib, json_format, grpc) are translated at the boundary with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class AgentHostError(Exception):
    """Base class of every error agent-host raises on purpose."""


class UsageError(AgentHostError):
    """A command was given something it cannot use: a bad flag value, a missing or unwritable
    path. ``what`` names the flag or the file; the CLI prints ``agent-host: <what>: <why>``."""

    def __init__(self, what: str, why: str) -> None:
        self.what = what
        self.why = why
        super().__init__(f"{what}: {why}")


class ManifestError(AgentHostError):
    """A plugin manifest (plugin.toml) is missing, malformed or invalid.

    One error may carry every mistake found in the file (``mistakes``, itself first), each
    a line of its own naming the file, the line where known, and the key."""

    def __init__(self, path: Path, message: str, key: str | None = None, line: int = 0) -> None:
        self.path = path
        self.key = key
        self.message = message
        self.line = line
        self.mistakes: list[ManifestError] = [self]
        super().__init__(self._one())

    def _one(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    @classmethod
    def several(cls, mistakes: list[ManifestError]) -> ManifestError:
        """One error for all of ``mistakes`` (at least one), in the file's order."""
        first = mistakes[0]
        first.mistakes = sorted(mistakes, key=lambda m: m.line or 1 << 30)
        first.args = ("\n".join(m._one() for m in first.mistakes),)
        return first


class ContentError(AgentHostError):
    """A file of a plugin's folder that the host will not read into its content: a link out of
    the folder, a special file, more bytes than content may have."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class RecordingError(AgentHostError):
    """A line of a recording (JSON Lines of events) cannot be read."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


class ConfigError(AgentHostError):
    """A host setting has a value it cannot take."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class ProtocolError(AgentHostError):
    """A worker sent something the session protocol does not allow."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        self.message = message
        super().__init__(f"plugin {plugin}: {message}")


class SandboxUnavailableError(AgentHostError):
    """Under ``--sandbox strict``, a layer of the workers' sandbox cannot be applied here."""

    def __init__(self, layer: str, reason: str) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(
            f"sandbox layer unavailable: {layer}: {reason} "
            "(strict: no worker runs without it; --sandbox warn runs them without it)"
        )


class ConfigFileError(AgentHostError):
    """The config file has mistakes: each is a line naming the file, the line and the key."""

    def __init__(self, mistakes: Sequence[object]) -> None:
        self.mistakes = list(mistakes)
        super().__init__("\nagent-host: ".join(map(str, mistakes)))
