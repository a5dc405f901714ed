"""Findings POSTed to an HTTP(S) endpoint (Falco's ``http_output``), a window at a time.

Each request carries up to a window of records of one kind as JSON Lines
(``Content-Type: application/x-ndjson``), the kind in ``X-Agent-Host-Kind`` (``findings`` or
``summary``); every finding carries its own ``id``, so a receiver that saw a request before its
answer was lost can keep one copy. A 2xx answer takes the records. A connection failure, a
timeout, 408, 429 or a 5xx is the receiver away: the records stay spooled and are sent again
after a pause. Any other answer (400, 401, 404, 413, ...) will not change by sending again: the
records are counted as refused and said, so that one bad request cannot hold the spool forever.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Final

import httpx

from agent_host.host.exports.sender import DeliveryError, SpooledOutput, parse

_TIMEOUT_S: Final = 5.0
_RETRY_STATUS: Final = frozenset({408, 429})


class Webhook(SpooledOutput):
    """Findings (and the run's summary) to ``url`` by HTTP POST."""

    kind = "webhook"

    def __init__(
        self, url: str, spool_dir: Path, max_spool_mib: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(url, spool_dir, max_spool_mib)
        self._headers = {"Content-Type": "application/x-ndjson", **(headers or {})}
        self._client: httpx.AsyncClient | None = None

    async def send(self, records: list[bytes]) -> int:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=_TIMEOUT_S, follow_redirects=False)
        refused = taken = 0
        lines = [parse(line) for line in records]
        for kind, group in itertools.groupby(lines, key=lambda line: line[0]):
            bodies = [body for _, _, body in group]
            try:
                answer = await self._client.post(
                    self.target,
                    content=b"\n".join(bodies) + b"\n",
                    headers={**self._headers, "X-Agent-Host-Kind": kind},
                )
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{type(exc).__name__}: {exc}", taken) from exc
            status = answer.status_code
            if status >= 500 or status in _RETRY_STATUS:
                raise DeliveryError(f"HTTP {status}", taken)
            if not 200 <= status < 300 and kind == "findings":
                refused += len(bodies)
            taken += len(bodies)
        return refused

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
