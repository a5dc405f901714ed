"""The part every output shares: its spool, the task that sends from it, retries, counts.

Detection never waits for a receiver. Each batch of written findings is appended to the
output's spool by the finding pipeline's listener, at once; a task sends from the spool's read
offset, a window at a time, and moves the offset past what the receiver took. A receiver that
is away only lets the spool grow, up to its bound (dropped past it, and counted); the task
retries with a growing pause, says once that the receiver is away and once that it is back.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Final

import orjson
import structlog

from agent_host.host.exports.spool import Spool
from agent_host.host.findings import json_lines
from agent_host.protocol import Finding

log = structlog.get_logger("agent_host")

_RETRY_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
#: Records sent before the receiver's answers are awaited: one round trip per window.
WINDOW: Final = 512


class DeliveryError(Exception):
    """The receiver failed, having taken only the first ``taken`` records of the window."""

    def __init__(self, reason: str, taken: int = 0) -> None:
        super().__init__(reason)
        self.taken = taken


class SpooledOutput(abc.ABC):
    """Findings (and the run's summary) to one receiver, through a spool in ``spool_dir``."""

    #: The output's name: its spool's, its metrics' label and its log lines'.
    kind: ClassVar[str]
    #: What the receiver is called in the log ("export server unreachable").
    noun: ClassVar[str] = "receiver"

    def __init__(self, target: str, spool_dir: Path, max_spool_mib: int) -> None:
        self.target = target
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool = Spool(spool_dir, max_spool_mib * 2**20, self.kind)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.refused = 0
        self._down_said = False
        self._closing = False
        #: The counts when the output closed (its spool with it).
        self._final: dict[str, int] | None = None

    @property
    def shown(self) -> str:
        """The target as the log shows it: a URL without its password."""
        parts = urllib.parse.urlsplit(self.target)
        if parts.password is None:
            return self.target
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    # -- what the host hands over (never waits) --------------------------------------------

    def findings_written(self, findings: Sequence[Finding]) -> None:
        pairs = zip(findings, json_lines(findings), strict=True)
        self.spool.append([record("findings", f.id, line) for f, line in pairs])
        self._wake.set()

    def summary(self, summary: dict[str, object], run_id: str) -> None:
        """The run's summary, spooled whatever the bound (it says what the bound dropped)."""
        body = orjson.dumps({**summary, self.kind: self.counts()})
        self.spool.append([record("summary", f"summary-{run_id}", body)], past_bound=True)
        self._wake.set()

    def counts(self) -> dict[str, int]:
        """Findings sent (taken by the receiver), dropped (past the spool's bound), refused by
        the receiver, and the bytes still spooled."""
        if self._final is not None:
            return self._final
        left = self.spool.size - self.spool.offset
        return {
            "sent": self.sent - self.refused,
            "dropped": self.spool.dropped,
            "refused": self.refused,
            "spooled_bytes": left,
        }

    # -- what a transport provides ---------------------------------------------------------

    @abc.abstractmethod
    async def send(self, records: list[bytes]) -> int:
        """Send ``records`` (each ``kind id body``, see :func:`record`); once the receiver
        took them all, return how many of them it refused for good (they will never be
        taken: counted and said, not retried forever), else raise :class:`DeliveryError`."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Let go of the connection (after a failure, and at the end)."""

    # -- the sender ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._send_forever())
        log.info("exporting findings", output=self.kind, target=self.shown)

    async def _send_forever(self) -> None:
        attempt = 0
        while True:
            if not self.spool.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._send_pending()
                attempt = 0
            except DeliveryError as exc:
                self._went_away(str(exc))
                await self._let_go()
            except Exception:  # a defect of ours: said with its traceback, and retried
                log.exception(f"the {self.kind} output failed; retrying", target=self.shown)
                await self._let_go()
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                attempt += 1

    async def _send_pending(self) -> None:
        while records := self.spool.peek(WINDOW):
            try:
                refused = await self.send(records)
            except DeliveryError as exc:
                self._taken(records[: exc.taken])
                raise
            self._taken(records)
            self._came_back()
            if refused:
                self.refused += refused
                log.error(f"the {self.kind} {self.noun} refused findings", refused=refused)

    def _taken(self, records: list[bytes]) -> None:
        self.spool.advance(records)
        self.sent += sum(r.startswith(b"findings ") for r in records)

    async def _let_go(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection has nothing left to lose
            await self.disconnect()

    def _went_away(self, error: str) -> None:
        if not self._down_said:
            self._down_said = True
            log.warning(
                f"{self.kind} {self.noun} unreachable; findings spooled on disk",
                target=self.shown,
                error=error,
            )

    def _came_back(self) -> None:
        if self._down_said:
            self._down_said = False
            log.info(f"{self.kind} {self.noun} reachable again; sending the spool")

    async def close(self, timeout: float) -> None:
        """Send what is spooled for up to ``timeout`` seconds; what is left stays on disk for
        the next run."""
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.spool.pending and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._let_go()
        counts = self.counts()
        if counts["spooled_bytes"]:
            log.warning(f"{self.kind} spool not all sent; kept for the next run", **counts)
        if counts["dropped"]:
            log.error(f"findings dropped from the {self.kind} output: its spool was full", **counts)
        elif counts["refused"]:
            log.error(f"findings refused by the {self.kind} {self.noun}", **counts)
        else:
            log.info(f"{self.kind} output ended", **counts)
        self._final = counts
        self.spool.close()


def record(kind: str, msg_id: str, body: bytes) -> bytes:
    """One spool line: kind, message id ("-" for none) and the JSON body, as it will be sent
    (neither kind nor id has a space; JSON has no raw newline)."""
    return b" ".join((kind.encode(), (msg_id or "-").encode(), body))


def parse(line: bytes) -> tuple[str, str | None, bytes]:
    """A spool line's kind, message id (None for none) and body."""
    kind, msg_id, body = line.split(b" ", 2)
    return kind.decode(), (msg_id.decode() if msg_id != b"-" else None), body
