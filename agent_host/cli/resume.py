"""``replay --resume``: a replay that was stopped (a SIGKILL, a reboot) goes on where every
finding before it had been written, rather than from the top, which would write every finding
of the part already done a second time.

While a replay runs, once a second, the host's safe point is kept in its state folder
(``replay.checkpoint``): the number of entries of the recording such that every event among
them was processed by every plugin owed it (or set aside), so that all their findings are
written. The file names the recording by path, size and modification time; ``--resume`` skips
that many entries of the same recording, and refuses, in one line, a recording that changed.
A replay that ends removes its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Final

from agent_host.errors import UsageError
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event
from agent_host.sources.replay import ReplaySource

NAME: Final = "replay.checkpoint"
#: How often the safe point is written.
INTERVAL_S: Final = 1.0


def _identity(recording: Path) -> dict[str, object]:
    info = recording.stat()
    return {
        "recording": str(recording.resolve()),
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
    }


def resume_point(state_dir: Path, recording: Path) -> int:
    """How many entries of ``recording`` a stopped replay had done.

    Raises:
        UsageError: there is no checkpoint of this recording, or the recording changed.
    """
    try:
        kept = json.loads((state_dir / NAME).read_text())
        done = int(kept["entries_done"])
        identity = {key: kept[key] for key in ("recording", "size", "mtime_ns")}
    except FileNotFoundError:
        raise UsageError("--resume", f"no stopped replay to resume in {state_dir}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError("--resume", f"{state_dir / NAME}: unreadable ({exc})") from None
    if identity["recording"] != str(recording.resolve()):
        raise UsageError("--resume", f"the stopped replay was of {identity['recording']}")
    if identity != _identity(recording):
        raise UsageError("--resume", f"{recording} changed since the stopped replay")
    return done


class Checkpoints:
    """Keeps the safe point of one replay in the state folder."""

    def __init__(self, state_dir: Path, source: ReplaySource, sup: Supervisor) -> None:
        self._path = state_dir / NAME
        self._identity = _identity(source.path)
        self._source = source
        self._sup = sup
        #: (the number of the last event accepted, entries read then), bounded by what is not
        #: yet safe: at most the host's backlogs' worth.
        self._taken: deque[tuple[int, int]] = deque()
        self._safe_entries = source.skip

    async def take(self, event: Event) -> None:
        """Hand ``event`` to the host, and note where in the recording that leaves it."""
        await self._sup.publish(event)
        self._taken.append((self._sup.accepted, self._source.lines))

    def _advance(self) -> None:
        safe_seq = self._sup.processed_through()
        while self._taken and self._taken[0][0] <= safe_seq:
            self._safe_entries = self._taken.popleft()[1]

    def save(self) -> None:
        self._advance()
        record = {**self._identity, "entries_done": self._safe_entries}
        temporary = self._path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(temporary, self._path)

    async def keep(self) -> None:
        """Save the safe point every INTERVAL_S, until cancelled."""
        while True:
            await asyncio.sleep(INTERVAL_S)
            with contextlib.suppress(OSError):  # try again; the state folder says why elsewhere
                self.save()

    def end(self, *, complete: bool) -> None:
        """The host stopped: a replay that read its recording to the end leaves nothing to
        resume; one that was stopped keeps where it got to."""
        with contextlib.suppress(OSError):
            if complete:
                self._path.unlink(missing_ok=True)
            else:
                self.save()
