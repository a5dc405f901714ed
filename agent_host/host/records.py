"""What a plugin's runner writes down: its quarantines, their release, and its dead letters.

Every write goes to the state store (``store.py``) and may fail (a full disk, a read-only state
folder). Such a failure is the host's, never the plugin's: it is logged and counted in the
plugin's ``state_errors``, and the runner carries on as if the write had been made (a plugin
is still quarantined in this run when its quarantine could not be kept for the next).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

import structlog

from agent_host.host.stats import PluginStats
from agent_host.host.store import StateStore


class PluginRecords:
    """The state store, as one version of one plugin writes to it."""

    def __init__(
        self,
        store: StateStore,
        name: str,
        version: str,
        stats: PluginStats,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._store: Final = store
        self._name: Final = name
        self._version: Final = version
        self._stats: Final = stats
        self._log: Final = log

    def quarantine(self, reason: str, level: int, retry_in_s: float) -> None:
        self._write(
            "quarantine",
            lambda: self._store.quarantine(
                self._name, self._version, reason, level=level, retry_in_s=retry_in_s
            ),
        )
        self._log.error(
            "plugin quarantined", reason=reason, level=level, retry_on_probation_in_s=retry_in_s
        )

    def release(self) -> None:
        """Lift the plugin's quarantine (probation served, or the operator's word)."""
        self._write("release quarantine", lambda: self._store.release(self._name, self._version))

    def dead_letter(self, seq: int, failure: str, event: bytes) -> None:
        """Set aside the event numbered ``seq``, which made the plugin fail with ``failure``."""
        kept = self._write(
            "dead letter",
            lambda: self._store.add_dead_letter(self._name, self._version, seq, failure, event),
        )
        self._stats.dead_lettered += 1
        self._stats.dead_letters_unkept += not kept
        self._log.error("event dead-lettered", seq=seq, failure=failure)

    def _write(self, what: str, write: Callable[[], object]) -> bool:
        """Whether it was written."""
        try:
            write()
        except (sqlite3.Error, OSError) as exc:
            self._stats.state_errors += 1
            self._log.error("could not write state", what=what, error=str(exc))
            return False
        return True
