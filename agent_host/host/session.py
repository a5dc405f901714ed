"""The host's gRPC server for one plugin: a Unix socket in a folder that only its workers' uid
may enter, one session per worker.

A connection counts for nothing until its first message is a Hello carrying the secret the host
created for that spawn; and since each plugin has a socket of its own, a secret, however it was
learnt, opens only its own plugin's session. Handlers are registered by hand so that the host
can write pre-framed bytes (see ``protocol.batch_frame``) while the worker still reads typed
HostMessages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, Protocol

import grpc
import structlog

from agent_host.protocol import MAX_MESSAGE_BYTES, WorkerMessage

log = structlog.get_logger("agent_host")

SERVICE: Final = "agent_host.protocol.v1.WorkerSession"
HELLO_TIMEOUT_S: Final = 5.0


class Conversant(Protocol):
    """Who holds a session once it is claimed: the plugin's runner."""

    async def converse(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None: ...


Claim = Callable[[str, bytes], Conversant | None]


class SessionServer:
    """Serves worker sessions on ``socket_path``; ``claim`` maps (worker_id, secret) to a handle."""

    def __init__(self, socket_path: Path, claim: Claim) -> None:
        self.socket_path = socket_path
        self._claim = claim
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # One worker at a time; a bound keeps a rogue process on the socket from piling
                # up handlers.
                ("grpc.max_concurrent_streams", 16),
            ]
        )
        handler: grpc.RpcMethodHandler[WorkerMessage, bytes]
        handler = grpc.stream_stream_rpc_method_handler(
            self._session,
            request_deserializer=WorkerMessage.FromString,
            response_serializer=None,  # responses are already serialized HostMessages
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Session": handler}),)
        )
        self.refused = 0

    async def start(self) -> None:
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        await self._server.start()
        self.socket_path.chmod(0o600)

    async def stop(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)

    async def _session(
        self,
        requests: AsyncIterator[WorkerMessage],
        context: grpc.aio.ServicerContext[WorkerMessage, bytes],
    ) -> None:
        try:
            first = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT_S)
        except (TimeoutError, StopAsyncIteration):
            first = WorkerMessage()
        hello = first.hello if first.WhichOneof("body") == "hello" else None
        runner = self._claim(hello.worker_id, hello.token) if hello is not None else None
        if runner is None:
            self.refused += 1
            log.warning("session refused: no valid worker secret", peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown worker or wrong secret")
            return
        await runner.converse(requests, context)


class PluginSessions:
    """One plugin's session socket: opened at its first spawn, kept across its workers."""

    def __init__(self, socket_path: Path, claim: Claim, secure: Callable[[], None]) -> None:
        self.socket_path = socket_path
        self._claim = claim
        #: Gives the socket to the worker's uid alone, once it exists.
        self._secure = secure
        self._server: SessionServer | None = None

    async def open(self) -> None:
        """Serve the socket, if it is not served yet; raises OSError."""
        if self._server is not None:
            return
        server = SessionServer(self.socket_path, self._claim)
        try:
            await server.start()
            self._secure()
        except (OSError, RuntimeError) as exc:
            await server.stop(0)
            raise OSError(f"cannot serve {self.socket_path}: {exc}") from exc
        self._server = server

    async def close(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    @property
    def refused(self) -> int:
        """Connections refused for want of a valid worker secret."""
        return self._server.refused if self._server is not None else 0
