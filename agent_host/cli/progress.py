"""A progress bar for a long replay on a terminal: how far, events a second, the time left.

Shown only where a person reads it (stderr a terminal, and the log not JSON, where every line
must stay JSON). It reads the recording's file position and the host's count four times a
second, never anything on the event path.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Final, TextIO

from tqdm import tqdm

from agent_host.host.supervisor import Supervisor
from agent_host.sources.replay import ReplaySource

_STEPS: Final = 1000
_EVERY_S: Final = 0.25


def wanted(stream: TextIO, log_format: str) -> bool:
    return stream.isatty() and log_format != "json"


class Progress:
    """The bar on ``stream`` from its making (0%) to :meth:`close` (where the replay got)."""

    def __init__(self, source: ReplaySource, sup: Supervisor, stream: TextIO) -> None:
        self._source = source
        self._sup = sup
        size = shutil.get_terminal_size()
        self._bar = tqdm(
            total=_STEPS,
            file=stream,
            bar_format="replay {percentage:3.0f}%|{bar}| {desc} [{elapsed}<{remaining}]",
            # The terminal's size (COLUMNS and LINES, else 80x24 where it says 0, as a bare pty
            # does: tqdm would draw nothing in no rows).
            ncols=size.columns or 80,
            nrows=size.lines or 24,
        )
        self._started, self._first = time.monotonic(), sup.accepted

    def update(self) -> None:
        self._bar.n = int(self._source.done_fraction * _STEPS)
        accepted = self._sup.accepted
        rate = (accepted - self._first) / max(time.monotonic() - self._started, 1e-9)
        self._bar.set_description_str(f"{accepted:,} events, {rate:,.0f}/s", refresh=False)
        self._bar.refresh()

    async def keep(self) -> None:
        """Update four times a second until cancelled, then once more and close."""
        try:
            while True:
                await asyncio.sleep(_EVERY_S)
                self.update()
        finally:
            self.update()
            self._bar.close()
