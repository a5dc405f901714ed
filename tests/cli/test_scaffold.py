"""agent-host plugins new: a plugin folder whose own test passes, through agent_host.testing."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from agent_host.testing import exec_event, run_plugin
from tests.helpers import agent_host

REPO = Path(__file__).resolve().parents[2]


class TestPluginNew:
    """The scaffolded plugin loads, detects, and its generated test passes."""

    def test_scaffold_then_test(self, tmp_path: Path) -> None:
        made = agent_host(["plugins", "new", "netcat_watch"], cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        folder = tmp_path / "plugins" / "netcat_watch"
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "detector.py",
            "plugin.toml",
            "sample_events.jsonl",
            "test_netcat_watch.py",
        ]
        # The tests need pytest, which `pip install agent-host` does not bring: the extra
        # that does is named where the author looks, and it exists.
        assert "pip install 'agent-host[plugin-dev]'" in (folder / "README.md").read_text()
        assert "agent-host[plugin-dev]" in made.stdout
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        assert any(
            need.startswith("pytest") for need in extras["optional-dependencies"]["plugin-dev"]
        )

        run = run_plugin(folder, [exec_event("/usr/bin/ls"), exec_event("/usr/bin/ncat", "-l")])
        assert run.rules() == ["netcat_watch.suspicious_name"]
        assert run.findings[0].event_ids == [2]

        generated = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        assert "2 passed" in generated.stdout

        listing = agent_host(["plugins", "--plugins", "plugins"], cwd=tmp_path)
        assert "netcat_watch" in listing.stdout

    def test_refuses_bad_name_and_existing_folder(self, tmp_path: Path) -> None:
        assert agent_host(["plugins", "new", "Bad-Name"], cwd=tmp_path).returncode == 2
        assert agent_host(["plugins", "new", "twice"], cwd=tmp_path).returncode == 0
        again = agent_host(["plugins", "new", "twice"], cwd=tmp_path)
        assert again.returncode == 2
        assert "already exists" in again.stderr


def test_pytest_fixture_runs_a_plugin(agent_host_plugin) -> None:  # type: ignore[no-untyped-def]
    """The ``agent_host_plugin`` fixture (registered through pytest11) is run_plugin."""
    plugin = Path(__file__).resolve().parents[2] / "agent_host" / "plugins" / "suspicious_exec"
    run = agent_host_plugin(plugin, [exec_event("/dev/shm/x"), exec_event("/usr/bin/id")])
    assert run.rules() == ["exec_from_writable_dir"]
    assert run.stats.processed == 2
