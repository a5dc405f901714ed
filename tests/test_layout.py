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


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The modules of the package ``path`` imports (``from a.b import c`` is ``a.b.c`` where that
    is a module, else ``a.b``), at any depth, under TYPE_CHECKING too: a circle is a circle."""
    found = set()
    for name in imports_of(path):
        if name in MODULES:
            found.add(name)
    # ``from a.b import c`` adds both a.b and a.b.c: keep a.b only where c is not a module.
    for name in list(found):
        parent = name.rpartition(".")[0]
        if parent in found and name in MODULES and not _imports_package(path, parent):
            found.discard(parent)
    return found - {module_name(path)}


def _imports_package(path: Path, package: str) -> bool:
    """Whether ``path`` takes a name from ``package`` itself (not only its submodules)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        own = isinstance(node, ast.ImportFrom) and node.module == package and node.level == 0
        if own and any(f"{package}.{a.name}" not in MODULES for a in node.names):  # type: ignore[attr-defined]
            return True
        if isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return True
    return False


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


#: The host's modules from the bottom up: a module imports only from its own layer or below,
#: so that the runner is never imported by what it uses, nor the supervisor by the runner.
HOST_LAYERS: list[tuple[str, set[str]]] = [
    (
        "parts",
        {
            "broker", "caps", "cgroups", "config", "delivery", "exports.spool", "exports.sender",
            "exports.nats", "exports.webhook", "exports.program", "exports.syslog",
            "facilities", "fanout",
            "findings",
            "lifecycle", "limits", "manifest", "output", "poison", "restart", "session", "spawn",
            "stats", "store", "suppress", "untrusted", "updates.attestation", "updates.content",
            "updates.signing", "updates.pins",
        },
    ),
    ("sandboxes, trials", {"sandbox", "updates.rollout", "updates.shadow", "updates.validation"}),
    ("one worker", {"child", "conversation", "generation", "postmortem", "records", "results"}),
    ("the runner", {"runner"}),
    ("the host", {"admission", "reload", "runtime", "supervisor"}),
    ("its control socket", {"control"}),
]  # fmt: skip


class TestStructure:
    """No import circle anywhere; the host's layers are imported from above only; no module is
    a room too big to read."""

    def test_no_import_circle(self) -> None:
        graph = {name: imported_modules(path) for name, path in MODULES.items()}
        assert circles(graph) == []

    def test_the_circle_finder_finds_one(self) -> None:
        assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

    def test_every_host_module_has_a_layer(self) -> None:
        placed = {m for _, modules in HOST_LAYERS for m in modules}
        host = {
            name.removeprefix("agent_host.host.")
            for name in MODULES
            if name.startswith("agent_host.host.") and not name.endswith(("updates", "exports"))
        }
        assert host == placed

    def test_no_host_module_is_imported_from_below(self) -> None:
        layer_of = {m: i for i, (_, modules) in enumerate(HOST_LAYERS) for m in modules}
        upward = []
        for module, layer in layer_of.items():
            for imported in imported_modules(MODULES[f"agent_host.host.{module}"]):
                target = layer_of.get(imported.removeprefix("agent_host.host."))
                if target is not None and target > layer:
                    upward.append(f"{module} ({HOST_LAYERS[layer][0]}) imports {imported}")
        assert upward == []

    @pytest.mark.parametrize(
        "path",
        [p for p in PACKAGE.rglob("*.py") if "protocol/v1" not in p.as_posix()],
        ids=lambda p: str(p.relative_to(PACKAGE)),
    )
    def test_no_hand_written_module_over_500_lines(self, path: Path) -> None:
        assert len(path.read_text().splitlines()) <= 500
