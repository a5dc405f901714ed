"""What the benchmarks share: plugin copies, recordings, a quiet log, timing helpers."""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path

from agent_host.host.manifest import Manifest
from agent_host.protocol import Event
from agent_host.sources.replay import write_recording
from agent_host.sources.synthetic import SyntheticSource

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_SIGMA = REPO.parent / "shared" / "sigma-linux"


def plugin_copy(source: Path, name: str, workdir: Path, config: str = "") -> Manifest:
    """A copy of the plugin in ``source`` under another name (manifest names must differ)."""
    target = workdir / name
    if not target.exists():
        shutil.copytree(source, target, symlinks=True)
        toml = (source / "plugin.toml").read_text()
        toml = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', toml, count=1)
        if "[permissions]" in config:  # replaces the manifest's own grants
            toml = re.sub(r"(?ms)^\[permissions\]\n.*?(?=^\[)", "", toml)
        if config:
            toml = re.sub(r"(?ms)^\[config\].*", "", toml) + f"\n[config]\n{config}\n"
        (target / "plugin.toml").write_text(toml)
    return Manifest.load(target / "plugin.toml")


def trivial(n: int, workdir: Path) -> list[Manifest]:
    return [plugin_copy(HERE / "plugins" / "noop", f"noop{i}", workdir) for i in range(n)]


def realistic(n: int, workdir: Path) -> list[Manifest]:
    """Up to four real detections: sigma (the SigmaHQ corpus when present), suspicious_exec,
    ransomware_burst, yara_scan."""
    sigma_dirs = ""
    if SHARED_SIGMA.is_dir():  # and its sandboxed worker may read it
        sigma_dirs = (
            f'rule_dirs = ["rules", "{SHARED_SIGMA}"]\n[permissions]\nread = ["{SHARED_SIGMA}"]'
        )
    chosen = [
        plugin_copy(REPO / "agent_host" / "plugins" / "sigma", "sigma", workdir, sigma_dirs),
        plugin_copy(
            REPO / "agent_host" / "plugins" / "suspicious_exec", "suspicious_exec", workdir
        ),
        plugin_copy(
            REPO / "agent_host" / "plugins" / "ransomware_burst", "ransomware_burst", workdir
        ),
        plugin_copy(REPO / "agent_host" / "plugins" / "yara_scan", "yara_scan", workdir),
    ]
    return chosen[:n]


def make_events(n: int) -> list[Event]:
    """A realistic mix: half process starts, a third file changes, the rest connections."""
    source = SyntheticSource(rate=0, seed=7)
    return [source.make(i) for i in range(1, n + 1)]


def make_recording(path: Path, n: int) -> Path:
    write_recording(path, make_events(n))
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
