"""``agent-host plugins new NAME``: a plugin folder to start from, with a test that passes."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from agent_host.protocol import message_to_json
from agent_host.testing import exec_event

_MANIFEST = """\
[plugin]
name = "{name}"
version = "0.1.0"
entrypoint = "detector:{cls}"
subscribe = ["process"]          # any of "process", "file", "network"
description = "Describe what {name} detects."

[limits]
batch_deadline_s = 5.0           # a batch not done by then is a hang: the worker is killed
memory_mb = 256

[config]
suspicious_names = ["nc", "ncat", "socat"]
"""

_DETECTOR = '''\
"""{name}: flags processes whose executable name is in [config] suspicious_names."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from agent_host.sdk import Event, Finding, Plugin, Severity


class {cls}(Plugin):
    def on_start(self, config: Mapping[str, Any]) -> None:
        self.names = set(config.get("suspicious_names", []))

    def on_event(self, event: Event) -> Iterator[Finding]:
        process = event.process
        if process.action != process.START:
            return
        name = PurePosixPath(process.exe).name
        if name in self.names:
            yield Finding(
                rule="{name}.suspicious_name",
                severity=Severity.MEDIUM,
                message=f"{{name}} started by {{process.parent_exe or process.ppid}}",
                attributes={{"exe": process.exe, "cmdline": " ".join(process.cmdline)}},
                techniques=("T1059",),
            )
'''

_TEST = '''\
"""Tests of {name}, run in a real sandboxed worker: python -m pytest {folder}"""

from pathlib import Path

from agent_host.testing import exec_event, run_plugin

HERE = Path(__file__).parent


def test_sample_events():
    run = run_plugin(HERE, HERE / "sample_events.jsonl")
    assert run.rules() == ["{name}.suspicious_name"]
    assert run.findings[0].event_ids == [2]
    assert run.state == "stopped" and run.stats.errors == 0


def test_true_negative():
    run = run_plugin(HERE, [exec_event("/usr/bin/ls", "-la")])
    assert run.findings == []
'''


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) or "Detector"


_README = """\
# {name}

A detection plugin for agent-host: `plugin.toml` is its manifest (name, entrypoint,
subscriptions, limits, config), `detector.py` the detection, `test_{name}.py` its tests, which
run the plugin in a real sandboxed worker on `sample_events.jsonl` (a recording).

The tests need pytest, which the agent alone does not bring; install the plugin author's extra:

    pip install 'agent-host[plugin-dev]'
    python -m pytest {folder}

Try it on the recording, then on what this machine does (as root, for the process sensor):

    agent-host replay {folder}/sample_events.jsonl --plugins {folder.parent}
    agent-host record --duration 30 -o events.jsonl
    agent-host replay events.jsonl --plugins {folder.parent}

The plugin guide (docs/plugin-guide.md in agent-host's repository) lists every event field.
"""


def new_plugin(name: str, parent: Path) -> Path:
    """Create ``parent/name`` with a manifest, a detector, a test and sample events."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise ValueError(
            f"{name!r} is not a valid plugin name (lowercase letters, digits, "
            "underscores; starting with a letter)"
        )
    folder = parent / name
    if folder.exists():
        raise ValueError(f"{folder} already exists")
    folder.mkdir(parents=True)
    cls = class_name(name)
    (folder / "plugin.toml").write_text(_MANIFEST.format(name=name, cls=cls))
    (folder / "detector.py").write_text(_DETECTOR.format(name=name, cls=cls))
    (folder / f"test_{name}.py").write_text(_TEST.format(name=name, folder=folder))
    samples = [
        exec_event("/usr/bin/ls", "-la"),
        exec_event("/usr/bin/nc", "-l", "-p", "4444", parent="/usr/bin/bash"),
    ]
    (folder / "sample_events.jsonl").write_text("".join(message_to_json(e) + "\n" for e in samples))
    (folder / "README.md").write_text(_README.format(name=name, folder=folder))
    return folder


def next_steps(folder: Path) -> str:
    return textwrap.dedent(f"""\
        created {folder}/
          plugin.toml          the manifest: name, entrypoint, subscriptions, limits, config
          detector.py          the detection
          test_*.py            its tests, run in a real sandboxed worker
          sample_events.jsonl  events for the tests (a recording)
          README.md            how to test and try it
        next: pip install 'agent-host[plugin-dev]'   (pytest, for the tests)
              python -m pytest {folder}
              agent-host replay {folder}/sample_events.jsonl --plugins {folder.parent}""")
