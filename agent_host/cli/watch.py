"""Hot reload: the plugins folder is watched, and a change asks for the same reload as SIGHUP.

A package manager or ``rsync`` writes a plugin's files one by one; reloading on the first one
would validate half a version (and reject it, and then not try it again until it changed
again). So a change only arms the reload: it is asked for once the folder has been quiet for
``QUIET_S``. Byte caches written under the folder are not changes of content.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = structlog.get_logger("agent_host")

#: How long the folder must have been unchanged before a reload is asked for.
QUIET_S: Final = 1.0
_IGNORED_PARTS: Final = frozenset({"__pycache__", ".pytest_cache"})


class _Changes(FileSystemEventHandler):
    """Notes the time of the last change (from watchdog's thread) and wakes the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, changed: asyncio.Event) -> None:
        self._loop = loop
        self._changed = changed
        self.last = 0.0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # a read is not a change
        path = Path(str(event.src_path))
        if _IGNORED_PARTS.intersection(path.parts) or path.suffix == ".pyc":
            return
        self.last = time.monotonic()
        self._loop.call_soon_threadsafe(self._changed.set)


class FolderWatch:
    """Sets ``reload`` once any of ``folders`` has changed and been quiet for ``QUIET_S``."""

    def __init__(
        self, folders: list[Path], reload: asyncio.Event, quiet_s: float = QUIET_S
    ) -> None:
        self._folders = folders
        self._reload = reload
        self._quiet_s = quiet_s
        self._changed = asyncio.Event()
        self._handler = _Changes(asyncio.get_running_loop(), self._changed)
        self._observer = Observer()

    def start(self) -> None:
        for folder in self._folders:
            self._observer.schedule(self._handler, str(folder), recursive=True)
        self._observer.start()
        log.info(
            "watching the plugins folder for changes",
            folders=" ".join(str(f) for f in self._folders),
        )

    async def run(self) -> None:
        """Until cancelled: each burst of changes, once quiet, asks for one reload."""
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                while (idle := time.monotonic() - self._handler.last) < self._quiet_s:
                    await asyncio.sleep(self._quiet_s - idle)
                log.info("plugins folder changed: reloading")
                self._reload.set()
        finally:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join)
