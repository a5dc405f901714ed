"""Under ``--log-format json`` every line the agent writes is JSON, whichever library emits it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LIBRARIES_SPEAK = """\
import logging
from agent_host import logs
logs.configure("json", "info")
# What asyncio says of a child it did not start, as it once did mid-log.
asyncio = logging.getLogger("asyncio")
asyncio.warning("Unknown child process pid %d, will report returncode 255", 28606)
logging.getLogger("watchdog.observers.inotify_buffer").error("Inotify queue overflowed")
logging.getLogger("nats").info("not the host's business at info")
import structlog
structlog.get_logger("agent_host").info("the host's own", plugin="p")
try:
    1 / 0
except ZeroDivisionError:
    structlog.get_logger("agent_host").exception("a task of ours failed")
    logging.getLogger("asyncio").exception("a library's task failed")
"""


def test_every_line_is_json_whoever_writes_it() -> None:
    run = subprocess.run(
        [sys.executable, "-c", LIBRARIES_SPEAK],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines()]  # each one JSON
    assert [(e["event"][:24], e["level"], e.get("logger")) for e in lines] == [
        ("Unknown child process pi", "warning", "asyncio"),
        ("Inotify queue overflowed", "error", "watchdog.observers.inotify_buffer"),
        ("the host's own", "info", None),
        ("a task of ours failed", "error", None),
        ("a library's task failed", "error", "asyncio"),
    ]
    for failed in lines[-2:]:  # the traceback as a field of the line, not lines of its own
        assert "Traceback" in failed["exception"] and "ZeroDivisionError" in failed["exception"]
