"""Findings exported to NATS JetStream, the way a fleet collects them.

NATS JetStream is chosen over Kafka and OTLP because one small static server
(``nats-server -js``, a Debian package) gives a persistent stream with acknowledged publishes
and de-duplication by message id: a finding republished after a lost acknowledgement is stored
once (``Nats-Msg-Id`` is the finding's own id). Every message of a window is published before
any of its acknowledgements is awaited (a message at a time kept up with about 600 findings a
second).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

import nats
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from agent_host.host.exports.sender import WINDOW, DeliveryError, SpooledOutput, parse

log = structlog.get_logger("agent_host")

STREAM: Final = "AGENT_HOST"
_ACK_TIMEOUT_S: Final = 5.0
_FAILURES: Final = (NatsError, JetStreamError, OSError, TimeoutError)


class NatsExport(SpooledOutput):
    """Findings (and the run's summary) to ``subject`` on a JetStream stream at ``url``."""

    kind = "export"  # its spool is export.spool, as before there were other outputs
    noun = "server"

    def __init__(self, url: str, subject: str, spool_dir: Path, max_spool_mib: int) -> None:
        super().__init__(url, spool_dir, max_spool_mib)
        self._subject = subject
        self._client: Any = None
        self._js: Any = None

    async def send(self, records: list[bytes]) -> int:
        """Publish the window, then await its acknowledgements. A message after a failed one
        may have been stored all the same: it is sent again, and JetStream keeps one."""
        try:
            js = await self._jetstream()
            acks = []
            for line in records:
                kind, msg_id, body = parse(line)
                headers = {"Nats-Msg-Id": msg_id} if msg_id else None
                acks.append(
                    await js.publish_async(f"{self._subject}.{kind}", body, headers=headers)
                )
            done = await asyncio.wait_for(
                asyncio.gather(*acks, return_exceptions=True), _ACK_TIMEOUT_S
            )
        except _FAILURES as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        for taken, result in enumerate(done):
            if isinstance(result, BaseException):
                raise DeliveryError(f"{type(result).__name__}: {result}", taken)
        return 0

    async def _jetstream(self) -> Any:
        if self._client is None or not self._client.is_connected:
            await self.disconnect()
            self._client = await nats.connect(
                self.target,
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
            self._went_away("connection lost")

    async def _reconnected(self) -> None:
        self._came_back()

    async def disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None:
            await client.close()
