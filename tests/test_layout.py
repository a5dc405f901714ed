"""The process boundaries are in the tree, and checked: the host never imports plugin code.

Host-side code (``host/``, ``sources/``, ``cli/``, ``testing/``) must not import the worker
runtime (``agent_host.worker``) or any module of a plugin; the worker may import the protocol
and the SDK but nothing of the host. Checked twice: statically over every import statement, and
in a real host process that ran the bundled plugins, by what it ended up with in sys.modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "agent_host"
HOST_SIDE = ("host", "sources", "cli", "testing")
PLUGIN_MODULES = sorted(
    {p.stem for p in (REPO / "agent_host" / "plugins").glob("*/*.py")}
    | {p.name for p in REPO.glob("agent_host/plugins/*")}
)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_under(*parts: str) -> list[Path]:
    return sorted(path for part in parts for path in (PACKAGE / part).rglob("*.py"))


class TestLayout:
    """A newcomer finds each process's code by folder name."""

    def test_the_top_level_is_the_map(self) -> None:
        folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
        assert folders == {"cli", "host", "plugins", "protocol", "sources", "testing", "worker"}
        assert (PACKAGE / "sdk.py").is_file()
        assert (PACKAGE / "sources" / "live" / "base.py").is_file()

    @pytest.mark.parametrize("path", modules_under(*HOST_SIDE), ids=lambda p: p.stem)
    def test_host_side_code_imports_no_worker_or_plugin_code(self, path: Path) -> None:
        bad = sorted(
            name
            for name in imports_of(path)
            if name.startswith("agent_host.worker") or name.split(".")[0] in PLUGIN_MODULES
        )
        assert bad == [], f"{path.relative_to(REPO)} imports {bad}"

    @pytest.mark.parametrize("path", modules_under("worker"), ids=lambda p: p.stem)
    def test_the_worker_imports_nothing_of_the_host(self, path: Path) -> None:
        bad = sorted(
            name
            for name in imports_of(path)
            if name.startswith(tuple(f"agent_host.{part}" for part in HOST_SIDE))
        )
        assert bad == [], f"{path.relative_to(REPO)} imports {bad}"

    def test_sensors_and_their_hub_do_not_import_each_other(self) -> None:
        hub = imports_of(PACKAGE / "sources" / "live" / "hub.py")
        assert not {m for m in hub if m.startswith("agent_host.sources.live.")} - {
            "agent_host.sources.live.base",
            "agent_host.sources.live.base.Emit",
            "agent_host.sources.live.base.Sensor",
        }

    def test_a_running_host_has_no_plugin_code_loaded(self, tmp_path: Path) -> None:
        script = textwrap.dedent(f"""\
            import asyncio, json, sys
            from pathlib import Path
            from agent_host.host.config import HostConfig
            from agent_host.host.findings import CollectingSink
            from agent_host.host.manifest import discover
            from agent_host.host.supervisor import Supervisor
            from agent_host.sources.synthetic import SyntheticSource

            async def main():
                found = discover(Path({str(REPO / "agent_host" / "plugins")!r}))
                sink = CollectingSink()
                sup = Supervisor(HostConfig(state_dir=None), found.manifests, sink)
                await sup.start()
                async for event in SyntheticSource(rate=10_000, limit=500, attack_every=5):
                    await sup.publish(event)
                await sup.stop()
                print(json.dumps({{"modules": sorted(sys.modules), "findings": len(sink.findings),
                                  "states": [r.phase.value for r in sup.plugins.values()]}}))

            asyncio.run(main())
        """)
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=True,
        )
        report = json.loads(out.stdout.splitlines()[-1])
        assert report["states"] == ["stopped"] * 4
        assert report["findings"] > 0  # the plugins did run, in their workers
        loaded = report["modules"]
        assert [m for m in loaded if m.startswith("agent_host.worker")] == []
        assert [m for m in loaded if m.split(".")[0] in PLUGIN_MODULES] == []
        assert "agent_host.sdk" not in loaded
