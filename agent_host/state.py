"""What the host remembers across runs: quarantined plugins and dead-lettered events (SQLite).

Both are operator-facing: ``agent-host plugins --release NAME`` lifts a quarantine, and
``agent-host deadletters`` lists (and exports, for replay after a fix) the events that made a
plugin fail. The dead-letter table is bounded; when full, the oldest letters are dropped and the
drop is logged with a count.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("agent_host")

DB_NAME: Final = "state.sqlite3"
MAX_DEAD_LETTERS: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS quarantine (
    plugin TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    failure TEXT NOT NULL,
    event BLOB NOT NULL
);
"""


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/agent-host, else ~/.local/state/agent-host."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agent-host"


@dataclass(frozen=True, slots=True)
class Quarantine:
    plugin: str
    version: str
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    time: float
    plugin: str
    version: str
    seq: int
    failure: str
    event: bytes  # a serialized Event


class StateStore:
    """The host's state; ``None`` as directory keeps it in memory (for tests and embedding)."""

    def __init__(self, directory: Path | None) -> None:
        if directory is None:
            target = ":memory:"
        else:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = str(directory / DB_NAME)
        self._db = sqlite3.connect(target, isolation_level=None)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- quarantine -----------------------------------------------------------------------

    def quarantine(self, plugin: str, version: str, reason: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)",
            (plugin, version, reason, time.time()),
        )

    def quarantined(self) -> dict[str, Quarantine]:
        rows = self._db.execute("SELECT plugin, version, reason, since FROM quarantine")
        return {r[0]: Quarantine(*r) for r in rows}

    def release(self, plugin: str) -> bool:
        """Lift ``plugin``'s quarantine; False if it was not quarantined."""
        return self._db.execute("DELETE FROM quarantine WHERE plugin = ?", (plugin,)).rowcount > 0

    # -- dead letters ---------------------------------------------------------------------

    def add_dead_letter(
        self, plugin: str, version: str, seq: int, failure: str, event: bytes
    ) -> None:
        self._db.execute(
            "INSERT INTO dead_letters (time, plugin, version, seq, failure, event) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), plugin, version, seq, failure, event),
        )
        (count,) = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        if count > MAX_DEAD_LETTERS:
            excess = count - MAX_DEAD_LETTERS
            self._db.execute(
                "DELETE FROM dead_letters WHERE id IN "
                "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)",
                (excess,),
            )
            log.warning("oldest dead letters dropped", dropped=excess, limit=MAX_DEAD_LETTERS)

    def dead_letters(self, plugin: str | None = None) -> list[DeadLetter]:
        query = "SELECT id, time, plugin, version, seq, failure, event FROM dead_letters"
        args: tuple[str, ...] = ()
        if plugin is not None:
            query += " WHERE plugin = ?"
            args = (plugin,)
        return [DeadLetter(*row) for row in self._db.execute(query + " ORDER BY id", args)]

    def purge_dead_letters(self, plugin: str | None = None) -> int:
        if plugin is None:
            return self._db.execute("DELETE FROM dead_letters").rowcount
        return self._db.execute("DELETE FROM dead_letters WHERE plugin = ?", (plugin,)).rowcount
