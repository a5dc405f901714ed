"""Findings exported to NATS JetStream, the way a fleet collects them, through a spool on disk.

NATS JetStream is chosen over Kafka and OTLP because one small static server
(``nats-server -js``, a Debian package) gives a persistent stream with acknowledged publishes
and de-duplication by message id: a finding republished after a lost acknowledgement is stored
once (``Nats-Msg-Id`` is the finding's own id).

Detection never waits for the network. Each batch of written findings is appended to the spool
(``export.spool`` in the state folder, one line each) by the finding pipeline's listener,
at once; a task publishes from the spool's read offset, one acknowledged message at a time, and
moves the offset (kept in ``export.offset``) past what the server acknowledged. An unreachable
server only lets the spool grow, up to its bound: what would pass the bound is dropped and
counted (``dropped``), never the host blocked. Once everything is sent the spool is emptied.
A spool left by a run that stopped while the server was away is sent by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import nats
import orjson
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from agent_host.host.findings import finding_json
from agent_host.protocol import Finding

log = structlog.get_logger("agent_host")

STREAM: Final = "AGENT_HOST"
SPOOL_NAME: Final = "export.spool"
OFFSET_NAME: Final = "export.offset"
_RETRY_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
_ACK_TIMEOUT_S: Final = 5.0
#: Messages published before their acknowledgements are awaited: one round trip per window,
#: not per message (a message at a time kept up with about 600 findings a second).
WINDOW: Final = 512


class Spool:
    """An append-only file of records and how far of it was sent; bounded in bytes."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self._path = folder / SPOOL_NAME
        self._offset_path = folder / OFFSET_NAME
        self._max_bytes = max_bytes
        # 0600 whatever the umask: the spool holds findings.
        fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "ab+")
        self.offset = self._read_offset()
        self.dropped = 0

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    @property
    def size(self) -> int:
        return self._file.seek(0, os.SEEK_END)

    @property
    def pending(self) -> bool:
        return self.offset < self.size

    def append(self, records: Sequence[bytes], *, past_bound: bool = False) -> None:
        """Add records at the end; those past the bound are dropped and counted (unless
        ``past_bound``: the run's one summary, which says what was dropped)."""
        room = self._max_bytes - self.size
        data = bytearray()
        for record in records:
            if len(data) + len(record) + 1 > room and not past_bound:
                self.dropped += 1
                continue
            data += record + b"\n"
        if data:
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)
            self._file.flush()

    def peek(self, limit: int = 1) -> list[bytes]:
        """The next ``limit`` records to send, at most (without their newlines)."""
        self._file.seek(self.offset)
        records = []
        for _ in range(limit):
            line = self._file.readline()
            if not line.endswith(b"\n"):
                break
            records.append(line[:-1])
        return records

    def advance(self, records: Sequence[bytes]) -> None:
        """``records`` (the next ones) were acknowledged; empty the spool once all were."""
        self.offset += sum(len(record) + 1 for record in records)
        if self.offset >= self.size:
            self._file.truncate(0)
            self.offset = 0
        self._offset_path.write_text(str(self.offset))

    def close(self) -> None:
        self._file.close()


class NatsExport:
    """Findings (and the run's summary) to ``subject`` on a JetStream stream at ``url``."""

    def __init__(self, url: str, subject: str, spool_dir: Path, max_spool_mib: int) -> None:
        self._url = url
        self._subject = subject
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool = Spool(spool_dir, max_spool_mib * 2**20)
        self._wake = asyncio.Event()
        self._client: Any = None
        self._js: Any = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self._down_said = False
        self._closing = False
        #: The counts when the export closed (its spool with it).
        self._final: dict[str, int] | None = None

    # -- what the host hands over (never waits) --------------------------------------------

    def findings_written(self, findings: Sequence[Finding]) -> None:
        self.spool.append([self._record("findings", f.id, finding_json(f)) for f in findings])
        self._wake.set()

    def summary(self, summary: dict[str, object], run_id: str) -> None:
        """The run's summary, spooled whatever the bound (it says what the bound dropped)."""
        body = orjson.dumps({**summary, "export": self.counts()})
        self.spool.append([self._record("summary", f"summary-{run_id}", body)], past_bound=True)
        self._wake.set()

    def counts(self) -> dict[str, int]:
        """Findings sent (acknowledged), dropped (past the spool's bound), and still spooled."""
        if self._final is not None:
            return self._final
        left = self.spool.size - self.spool.offset
        return {"sent": self.sent, "dropped": self.spool.dropped, "spooled_bytes": left}

    @staticmethod
    def _record(kind: str, msg_id: str, body: bytes) -> bytes:
        """One spool line: kind, message id ("-" for none) and the JSON body, as it will be
        sent (neither kind nor id has a space; JSON has no raw newline)."""
        return b" ".join((kind.encode(), (msg_id or "-").encode(), body))

    # -- the sender ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._send_forever())
        log.info("exporting findings", url=self._url, subject=self._subject)

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
            except (NatsError, JetStreamError, OSError, TimeoutError) as exc:
                self._went_away(f"{type(exc).__name__}: {exc}")
                await self._disconnect()
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                attempt += 1

    async def _send_pending(self) -> None:
        """Publish the spool a window at a time, every message of a window before any of its
        acknowledgements is awaited; move the offset past the acknowledged head of the window.
        A message after a failed one may have been stored all the same: it is sent again, and
        JetStream keeps one (its id is the finding's)."""
        js = await self._jetstream()
        while records := self.spool.peek(WINDOW):
            acks = []
            for record in records:
                kind, msg_id, body = record.split(b" ", 2)
                subject = f"{self._subject}.{kind.decode()}"
                headers = {"Nats-Msg-Id": msg_id.decode()} if msg_id != b"-" else None
                acks.append(await js.publish_async(subject, body, headers=headers))
            done = await asyncio.wait_for(
                asyncio.gather(*acks, return_exceptions=True), _ACK_TIMEOUT_S
            )
            acknowledged = 0
            for result in done:
                if isinstance(result, BaseException):
                    break
                acknowledged += 1
            self.spool.advance(records[:acknowledged])
            self.sent += sum(r.startswith(b"findings ") for r in records[:acknowledged])
            if acknowledged < len(records):
                failure = done[acknowledged]
                assert isinstance(failure, BaseException)
                raise failure
            self._came_back()

    async def _jetstream(self) -> Any:
        if self._client is None or not self._client.is_connected:
            await self._disconnect()
            self._client = await nats.connect(
                self._url,
                connect_timeout=2,
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,  # a fleet's server comes back; so do we
                error_cb=self._client_error,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
            )
            js = self._client.jetstream(publish_async_max_pending=WINDOW)
            try:
                await js.stream_info(STREAM)
            except JetStreamError:
                await js.add_stream(name=STREAM, subjects=[f"{self._subject}.>"])
            self._js = js
        return self._js

    # nats-py reports what happens to the connection through these (never raising).

    async def _client_error(self, exc: Exception) -> None:
        log.debug("export connection error", error=f"{type(exc).__name__}: {exc}")

    async def _disconnected(self) -> None:
        if not self._closing:
            self._went_away()

    async def _reconnected(self) -> None:
        self._came_back()

    def _went_away(self, error: str = "connection lost") -> None:
        if not self._down_said:
            self._down_said = True
            log.warning(
                "export server unreachable; findings spooled on disk", url=self._url, error=error
            )

    def _came_back(self) -> None:
        if self._down_said:
            self._down_said = False
            log.info("export server reachable again; sending the spool", url=self._url)

    async def _disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):  # a dead connection has nothing left to lose
                await client.close()

    async def close(self, timeout: float) -> None:
        """Send what is spooled for up to ``timeout`` seconds; what is left stays on disk for
        the next run."""
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.spool.pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()
        counts = self.counts()
        if counts["spooled_bytes"]:
            log.warning("export spool not all sent; kept for the next run", **counts)
        if counts["dropped"]:
            log.error("findings dropped from the export: its spool was full", **counts)
        else:
            log.info("export ended", **counts)
        self._final = counts
        self.spool.close()
