"""Host settings, each declared once: name, default, bound and meaning.

The CLI builds a HostConfig from its flags; tests and embedders build one directly. Values are
checked when the object is made, so a bad one fails at start-up with the setting's name.
"""

from __future__ import annotations

import enum
import math
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent_host.errors import ConfigError
from agent_host.host.caps import Caps
from agent_host.host.suppress import Suppression


class SandboxMode(enum.StrEnum):
    """Whether a worker runs without a sandbox layer this machine lacks."""

    #: No worker runs without every layer.
    STRICT = "strict"
    #: A worker runs without the layers this machine lacks, each said once.
    WARN = "warn"


class SignaturePolicy(enum.StrEnum):
    """What the host does with a plugin that no trusted key signed."""

    #: It does not start.
    ENFORCE = "enforce"
    #: It starts, and the host says so.
    WARN = "warn"
    #: Signatures are not checked.
    OFF = "off"


def default_sandbox_mode() -> SandboxMode:
    """Strict where every layer can be had (as root); a warning per missing layer elsewhere."""
    return SandboxMode.STRICT if os.geteuid() == 0 else SandboxMode.WARN


@dataclass(frozen=True, slots=True)
class HostConfig:
    """How the host batches, buffers and supervises."""

    #: A batch is sent when it holds this many events ...
    batch_size: int = 256
    #: ... or when its oldest event has waited this long.
    flush_interval_s: float = 0.005
    #: Batches a worker may hold unacknowledged at once; keeps it busy without letting it hoard.
    window: int = 4
    #: Batches kept per subscription group until every plugin in it has processed them. When full,
    #: the source waits (nothing is dropped): a plugin this far behind holds up the source.
    backlog_batches: int = 256
    #: How long a worker has to connect, import its plugin and run on_start.
    start_timeout_s: float = 20.0
    #: How long a stop waits for every accepted event to be delivered; past it, what is not
    #: is counted undelivered (a stop is bounded in every state: a slow plugin far behind, a
    #: plugin that cannot start).
    drain_timeout_s: float = 30.0
    #: How long a worker has to run on_stop and exit before it is killed.
    stop_timeout_s: float = 5.0
    #: An idle worker that sends nothing (not even a heartbeat) for this long is hung.
    heartbeat_timeout_s: float = 5.0
    #: Between SIGTERM and SIGKILL when a worker is stopped for a fault.
    kill_grace_s: float = 0.5
    #: How often deadlines are checked; hang detection is this precise.
    watchdog_interval_s: float = 0.02
    #: How often memory, CPU and processes are measured.
    sample_interval_s: float = 0.1
    #: The poison budget: a plugin is quarantined when more than this many of its events are
    #: dead-lettered within an hour ...
    poison_per_hour: int = 100
    #: ... or when more than this share of the events it settled were, once it has at least
    #: poison_min_letters dead letters. Crashes pinned on one event count here, not toward the
    #: crash-loop breaker, so that a few poisoned inputs cannot switch a detection off.
    poison_max_share: float = 0.1
    poison_min_letters: int = 10
    #: A cgroup per worker (memory, pids; everything it starts is killed with it), where the
    #: host can make one; where it cannot, the host says so at start.
    cgroups: bool = True
    #: Fork workers from a pre-initialised zygote (fast restarts) rather than exec each one.
    zygote: bool = True
    #: "strict": a worker whose sandbox misses a layer does not run; "warn": it runs without
    #: that layer, and the host says so once per layer.
    sandbox: SandboxMode = field(default_factory=default_sandbox_mode)
    #: The size of each worker's private /tmp, in MiB (its pages count against its cgroup).
    scratch_mb: int = 64
    #: What a manifest may ask for (limits and permissions).
    caps: Caps = field(default_factory=Caps)
    #: What becomes of a plugin no trusted key signed.
    signatures: SignaturePolicy = SignaturePolicy.WARN
    #: Ed25519 public keys (PEM files) whose signatures on plugins are trusted.
    trusted_keys: tuple[Path, ...] = ()
    #: On a reload, run a new version (or new content) over its own cases and a hostile
    #: corpus in a validation worker first, and keep the running version if it fails.
    validate_updates: bool = True
    #: On a reload, run a changed plugin's validated new version in shadow first, beside the
    #: current one on the same events with its findings kept apart, and promote it once it has
    #: processed shadow_events events or run shadow_s seconds without a fault; a fault rolls it
    #: back. Off: the new version replaces the current one at once.
    shadow: bool = True
    shadow_events: int = 10_000
    shadow_s: float = 300.0
    #: This host is a validation host (``validation.py``): its plugins are told so, and
    #: content they cannot load fails their start instead of being skipped.
    validating: bool = False
    #: Findings an operator judged benign (``suppress.py``), and whether the allowlist of
    #: package managers applies as well.
    suppressions: tuple[Suppression, ...] = ()
    allowlist: bool = True
    #: The host name stamped on events and findings that carry none.
    hostname: str = field(default_factory=socket.gethostname)
    #: Where the host keeps state across runs (quarantine, dead letters); None for no state.
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and not (math.isfinite(value) and value > 0):  # nan passes every `<=`
                raise ConfigError(f.name, f"must be a finite positive number, got {value!r}")
        for name, kind in (("sandbox", SandboxMode), ("signatures", SignaturePolicy)):
            try:  # a string from an embedder becomes the enum; a wrong one is named
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                known = ", ".join(kind)
                raise ConfigError(name, f"one of {known}, got {getattr(self, name)!r}") from None
        if self.poison_max_share > 1:
            raise ConfigError("poison_max_share", f"at most 1, got {self.poison_max_share}")
        if self.batch_size > 65_536:
            raise ConfigError("batch_size", f"at most 65536, got {self.batch_size}")
