"""The options of ``run``, ``replay`` and ``record``: typed, frozen, each default declared here.

argparse (``parser.py``) and the config file (``config_file.py``) speak in flags and their
destinations; each field below is named as its flag's destination, so that a setting is one
name from the command line through the file to the code. The parser takes its defaults from
these classes, and the command's code reads nothing but them: no ``argparse.Namespace`` goes
past ``from_args``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal, Self

from agent_host.host.caps import Caps
from agent_host.host.config import HostConfig, SandboxMode, SignaturePolicy
from agent_host.host.suppress import Suppression
from agent_host.logs import LogFormat
from agent_host.sources.live import OverflowPolicy

#: The host's own defaults, which the options' defaults repeat nowhere else.
_HOST = HostConfig()
#: The log's options and their defaults; taken before the command or after it.
LOG_DEFAULTS: Final = {"log_format": "auto", "log_level": "info"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The options in ``args``; a field that its command's parser has no flag for keeps its
        default."""
        given = vars(args)
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in given:
                value = given[field.name]
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveOptions(_Options):
    """The live sensors' options (``run`` on live sensors, and ``record``)."""

    #: Stop after this many seconds; 0 runs until signalled.
    duration: float = 0.0
    sensors: str = "process,file,network"
    #: Folders the file sensor watches; empty: its default folders.
    watch: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    poll_interval: float = 0.5
    queue_size: int = 65_536
    overflow: OverflowPolicy = OverflowPolicy.BLOCK

    def __post_init__(self) -> None:
        object.__setattr__(self, "overflow", OverflowPolicy(self.overflow))

    @property
    def sensor_names(self) -> list[str]:
        return [s.strip() for s in self.sensors.split(",") if s.strip()]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordOptions(LiveOptions):
    """``agent-host record``."""

    output: Path
    format: Literal["jsonl", "binary"] = "jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions(LiveOptions):
    """``agent-host run`` and ``replay`` (which has no live, control, metrics or export
    options: they keep their defaults)."""

    command: Literal["run", "replay"] = "run"
    #: live, synthetic, or replay:FILE (``replay``'s recording is ``recording``).
    source: str = "live"
    recording: Path | None = None
    #: ``replay --resume``: go on where a stopped replay of the same recording got to.
    resume: bool = False
    rate: float = 200.0
    log_format: LogFormat = "auto"
    log_level: str = "info"
    #: The command line as given, and the config file read under it (SIGHUP reads it again).
    argv: tuple[str, ...] = ()
    config_file: Path | None = None
    # The host.
    plugins: tuple[Path, ...] | None = None
    findings: Path | None = None
    #: Rotate the findings file past this size (0: never), keeping this many old ones.
    findings_max_mb: int = 0
    findings_keep: int = 5
    quiet: bool = False
    batch_size: int = _HOST.batch_size
    flush_ms: float = _HOST.flush_interval_s * 1000
    state_dir: Path | None = None
    sandbox: SandboxMode = _HOST.sandbox
    summary_json: Path | None = None
    watch_plugins: bool = True
    #: How long a stop waits for what was accepted to be delivered.
    drain_timeout: float = _HOST.drain_timeout_s
    # The content policy.
    trusted_key: tuple[Path, ...] = ()
    signatures: SignaturePolicy = _HOST.signatures
    allow_network: bool = False
    allow_exec: bool = False
    shadow: bool = _HOST.shadow
    shadow_events: int = _HOST.shadow_events
    shadow_seconds: float = _HOST.shadow_s
    suppress: tuple[Suppression, ...] = ()
    allowlist: bool = _HOST.allowlist
    # What a daemon serves.
    control_socket: Path | None = None
    export: str | None = None
    export_subject: str = "agent-host"
    export_spool_mb: int = 64
    webhook: str | None = None
    webhook_header: tuple[str, ...] = ()
    syslog: str | None = None
    program: str | None = None
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        LiveOptions.__post_init__(self)
        object.__setattr__(self, "sandbox", SandboxMode(self.sandbox))
        object.__setattr__(self, "signatures", SignaturePolicy(self.signatures))

    def host_config(self, state_dir: Path | None) -> HostConfig:
        """The host's settings from these options."""
        return HostConfig(
            batch_size=self.batch_size,
            flush_interval_s=self.flush_ms / 1000,
            drain_timeout_s=self.drain_timeout,
            state_dir=state_dir,
            sandbox=self.sandbox,
            caps=Caps(network=self.allow_network, exec=self.allow_exec),
            signatures=self.signatures,
            trusted_keys=self.trusted_key,
            shadow=self.shadow,
            shadow_events=self.shadow_events,
            shadow_s=self.shadow_seconds,
            suppressions=self.suppress,
            allowlist=self.allowlist,
        )


#: The defaults the parser shows and sets.
RUN_DEFAULTS = RunOptions()
