"""What the operator lets a manifest ask for: limits and permissions, capped.

A manifest is written by whoever wrote the plugin; the caps are the operator's. A manifest that
asks for more than they allow (8 GiB, a ten-minute deadline, the network) is refused, with a
line naming the plugin's file, the key and the cap, and the other plugins run as before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from agent_host.errors import ManifestError
from agent_host.host.manifest import Limits, Manifest

#: The most of each limit a manifest may ask for. Defaults leave room for every bundled plugin.
DEFAULT_LIMIT_CAPS: Final = Limits(
    batch_deadline_s=60.0,
    memory_mb=2048,
    cpu_percent=100.0,
    cpu_window_s=60.0,
    cpu_cores=4.0,
    open_files=4096,
    processes=256,
    max_findings_per_event=1000,
)


@dataclass(frozen=True, slots=True)
class Caps:
    """The most a manifest may ask for."""

    #: Each limit at most this.
    limits: Limits = DEFAULT_LIMIT_CAPS
    #: Whether a manifest may be granted the network, or to execute programs.
    network: bool = False
    exec: bool = False
    #: The folders below which a manifest may be granted reads; None: any that can be granted.
    read: tuple[str, ...] | None = None

    def check(self, manifest: Manifest) -> ManifestError | None:
        """Why ``manifest`` asks for more than these caps allow; None if it does not."""
        path = manifest.directory / "plugin.toml"
        for limit in fields(Limits):
            asked, cap = getattr(manifest.limits, limit.name), getattr(self.limits, limit.name)
            if asked > cap:
                return ManifestError(
                    path, f"{asked} exceeds the operator's cap of {cap}", f"limits.{limit.name}"
                )
        wants = manifest.permissions
        for name, asked_for in (("network", wants.network), ("exec", wants.exec)):
            if asked_for and not getattr(self, name):
                return ManifestError(
                    path,
                    f"not allowed by the operator (--allow-{name})",
                    f"permissions.{name}",
                )
        if self.read is not None:
            for entry in wants.read:
                if not any(Path(entry).is_relative_to(allowed) for allowed in self.read):
                    return ManifestError(
                        path,
                        f"{entry!r} is outside what the operator allows ({', '.join(self.read)})",
                        "permissions.read",
                    )
        return None
