"""Relaying a worker's stdout and stderr into the host's log: bounded lines at a bounded rate.

A plugin may print anything, as fast as it likes; the host logs each line tagged with the plugin
and pid, cuts lines at a fixed length, and past a rate limit counts the lines it suppresses and
says so, instead of letting one plugin drown the log or stall the host.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import structlog

from agent_host.host.untrusted import RateLimit, printable

log = structlog.get_logger("agent_host")

LINE_MAX: Final = 4096
LINES_PER_S: Final = 200.0
_CHUNK: Final = 65536


async def relay_output(stream: asyncio.StreamReader, plugin: str, pid: int, name: str) -> None:
    """Log ``stream`` line by line until it closes."""
    out = log.bind(plugin=plugin, pid=pid, stream=name)
    pending = b""
    limit = RateLimit(LINES_PER_S)
    while chunk := await stream.read(_CHUNK):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if len(pending) > LINE_MAX:  # a line with no end in sight: log what we have
            lines.append(pending)
            pending = b""
        now = time.monotonic()
        for line in lines:
            if not limit.allow(now):
                continue
            if suppressed := limit.take_suppressed():
                out.warning("plugin output suppressed", lines=suppressed, limit_per_s=LINES_PER_S)
            text = printable(line[:LINE_MAX].decode("utf-8", "replace").rstrip("\r"))
            if len(line) > LINE_MAX:
                text += f" ... ({len(line) - LINE_MAX} bytes cut)"
            out.info("plugin output", line=text)
    if suppressed := limit.take_suppressed():
        out.warning("plugin output suppressed", lines=suppressed, limit_per_s=LINES_PER_S)
