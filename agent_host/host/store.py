"""What the host remembers across runs: quarantined plugins, dead-lettered events and each
plugin's version history (SQLite).

Both are operator-facing: ``agent-host plugins release NAME`` lifts a quarantine, and
``agent-host deadletters`` lists (and exports, for replay after a fix) the events that made a
plugin fail. A quarantine belongs to one version of a plugin (a new version starts clean) and
has a time after which the plugin is retried on probation. The dead-letter table is bounded;
when full, the oldest letters are dropped and the
drop is logged with a count. The history (``agent-host plugins history NAME``) says, for each
version's measurement, when it was validated, shadowed, promoted, rolled back or replaced, and
why; it too is bounded, oldest rows first.
"""

from __future__ import annotations

import contextlib
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
MAX_HISTORY: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS quarantines (
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    level INTEGER NOT NULL,  -- how many quarantines in a row this is (1 for the first)
    until REAL NOT NULL,     -- when it is retried on probation
    PRIMARY KEY (plugin, version)
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
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    measurement TEXT NOT NULL,
    what TEXT NOT NULL,      -- started, validated, rejected, shadow, promoted, rolled back, ...
    detail TEXT NOT NULL
);
"""


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


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
    level: int
    until: float


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    time: float
    plugin: str
    version: str
    measurement: str
    what: str
    detail: str


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
        self.directory = directory
        if directory is None:
            target = ":memory:"
        else:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = str(directory / DB_NAME)
        if directory is not None and _is_empty(directory / DB_NAME):
            # A database cut to nothing (a crash, a full disk): whatever quarantines it held
            # are gone. SQLite would take it for a new one and say nothing.
            self._set_aside(directory / DB_NAME, "empty (0 bytes)")
        self._db = sqlite3.connect(target, isolation_level=None)
        if directory is not None:  # 0600 whatever the umask: dead letters are events
            with contextlib.suppress(OSError):
                (directory / DB_NAME).touch(mode=0o600)
                (directory / DB_NAME).chmod(0o600)
        try:
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT COUNT(*) FROM quarantines").fetchone()
            problem = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":  # damage a first read does not reach (the last pages, say)
                raise sqlite3.DatabaseError(problem)
        except sqlite3.DatabaseError as exc:
            if directory is None or isinstance(exc, sqlite3.OperationalError):
                raise  # not a damaged file: a folder it cannot write, a locked database
            self._db.close()
            self._set_aside(directory / DB_NAME, f"damaged ({exc})")
            self._db = sqlite3.connect(target, isolation_level=None)
            self._db.executescript(_SCHEMA)

    @staticmethod
    def _set_aside(path: Path, why: str) -> None:
        """Move a damaged database out of the way, keeping it for a post-mortem."""
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        log.error(
            f"state database is {why}; set aside and started afresh "
            "(quarantines and dead letters in it are not used)",
            path=str(path),
            moved_to=str(aside),
        )

    def close(self) -> None:
        self._db.close()

    # -- quarantine -----------------------------------------------------------------------

    def quarantine(
        self, plugin: str, version: str, reason: str, *, level: int, retry_in_s: float
    ) -> None:
        now = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO quarantines VALUES (?, ?, ?, ?, ?, ?)",
            (plugin, version, reason, now, level, now + retry_in_s),
        )

    def quarantined(self) -> dict[tuple[str, str], Quarantine]:
        """Every quarantine, by (plugin, version)."""
        rows = self._db.execute(
            "SELECT plugin, version, reason, since, level, until FROM quarantines"
        )
        return {(r[0], r[1]): Quarantine(*r) for r in rows}

    def quarantine_of(self, plugin: str, version: str) -> Quarantine | None:
        return self.quarantined().get((plugin, version))

    def release(self, plugin: str, version: str | None = None) -> bool:
        """Lift ``plugin``'s quarantine (of every version, unless one is named); False if it was
        not quarantined."""
        if version is None:
            cursor = self._db.execute("DELETE FROM quarantines WHERE plugin = ?", (plugin,))
        else:
            cursor = self._db.execute(
                "DELETE FROM quarantines WHERE plugin = ? AND version = ?", (plugin, version)
            )
        return cursor.rowcount > 0

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

    # -- history --------------------------------------------------------------------------

    def record(
        self, plugin: str, version: str, measurement: str, what: str, detail: str = ""
    ) -> None:
        """Add a line to ``plugin``'s history."""
        self._db.execute(
            "INSERT INTO history (time, plugin, version, measurement, what, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), plugin, version, measurement, what, detail),
        )
        self._db.execute(
            "DELETE FROM history WHERE id <= (SELECT MAX(id) FROM history) - ?", (MAX_HISTORY,)
        )

    def last_measurement(self, plugin: str) -> str:
        """The measurement of ``plugin``'s latest history line ("" if it has none)."""
        row = self._db.execute(
            "SELECT measurement FROM history WHERE plugin = ? ORDER BY id DESC LIMIT 1", (plugin,)
        ).fetchone()
        return str(row[0]) if row else ""

    def history(self, plugin: str) -> list[HistoryEntry]:
        rows = self._db.execute(
            "SELECT time, plugin, version, measurement, what, detail FROM history "
            "WHERE plugin = ? ORDER BY id",
            (plugin,),
        )
        return [HistoryEntry(*row) for row in rows]
