"""How the host starts worker processes: forked by the zygote (fast), or exec'd (the fallback).

Both give a ``WorkerProcess``: a pid (the leader of the worker's own process group), its stdin,
stdout and stderr as asyncio streams, and ``wait()`` for its exit status. The host supervises
both kinds alike; only the zygote's children report their exit through the zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from agent_host.protocol import ZYGOTE_MAX_MESSAGE_BYTES

log = structlog.get_logger("agent_host")

_WORKER_MAIN: Final = "import sys; from agent_host.worker.boot import main; sys.exit(main())"
_ZYGOTE_MAIN: Final = "import sys; from agent_host.worker.zygote import main; main()"
_PROBE_MAIN: Final = "from agent_host.worker.sandbox.probe import main; main()"


#: Where the worker may find agent_host itself, whether installed or run from a checkout.
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent)


def worker_env() -> dict[str, str]:
    """The whole environment of a worker: nothing of the host's but what Python needs."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": _PACKAGE_ROOT,
        "PYTHONUNBUFFERED": "1",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


async def probe_sandbox(timeout: float = 30.0) -> str:
    """Run the sandbox probe in a fresh interpreter (where there is no zygote to ask); returns
    its report (base64 SandboxReport), or "" if it could not run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROBE_MAIN,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=worker_env(),
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (OSError, TimeoutError):
        return ""
    return out.decode().strip()


class WorkerProcess(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...


class Spawner(Protocol):
    async def spawn(self, args: list[str], cwd: Path, broker_fd: int) -> WorkerProcess:
        """Start ``agent_host.worker.boot.main(args + ["--parent-pid", P, "--broker-fd", F])``
        in ``cwd``, with a copy of ``broker_fd`` as its F."""
        ...

    async def close(self) -> None: ...


class ExecSpawner:
    """A fresh interpreter per worker (fork + exec; never a fork that goes on running Python)."""

    async def spawn(self, args: list[str], cwd: Path, broker_fd: int) -> WorkerProcess:
        # Not "-m agent_host.worker.boot": that would run the module as __main__, a second copy
        # beside the agent_host.worker.boot that plugins import.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_MAIN,
            *args,
            "--parent-pid",
            str(os.getpid()),
            "--broker-fd",
            str(broker_fd),
            pass_fds=(broker_fd,),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=worker_env(),
            start_new_session=True,  # its own process group: killed as one, children too
        )

    async def close(self) -> None:
        return None


class ZygoteChild:
    """A worker forked by the zygote; its exit status arrives as a message from the zygote."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def exited(self, returncode: int) -> None:
        if not self._exited.done():
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


async def _read_stream(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


async def _write_stream(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


class ZygoteSpawner:
    """Forks workers through the zygote; falls back to exec when the zygote is unavailable."""

    def __init__(self) -> None:
        self._fallback = ExecSpawner()
        self._sock: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._children: dict[int, ZygoteChild] = {}
        self._ready: asyncio.Future[None] | None = None
        self._ids = 0
        #: What the zygote's probe found this machine's sandbox can apply (base64
        #: SandboxReport), as it said in its "ready".
        self.sandbox_probe = ""

    @property
    def alive(self) -> bool:
        return self._sock is not None

    @property
    def parent_pid(self) -> int:
        return self._process.pid if self._process is not None and self.alive else os.getpid()

    async def start(self, timeout: float = 30.0) -> bool:
        """Start the zygote; False (and exec from then on) if it does not come up."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _ZYGOTE_MAIN,
                str(theirs.fileno()),
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                # Not the host's stdout: nothing may slip into the findings on a terminal.
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=worker_env(),
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("zygote could not start; workers will be exec'd", error=str(exc))
            ours.close()
            return False
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop.add_reader(ours.fileno(), self._on_message)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            log.warning("zygote did not come up; workers will be exec'd", limit_s=timeout)
            self._lost()
            return False
        return self.alive

    def _on_message(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(ZYGOTE_MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "ready" and self._ready is not None and not self._ready.done():
            self.sandbox_probe = str(message.get("sandbox", ""))
            self._ready.set_result(None)
        elif op == "spawned":
            waiter = self._pending.pop(message["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(int(message["pid"]))
        elif op == "failed":
            waiter = self._pending.pop(message["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(OSError(f"zygote could not fork: {message['error']}"))
        elif op == "exited":
            child = self._children.pop(int(message["pid"]), None)
            if child is not None:
                child.exited(int(message["returncode"]))

    def _lost(self) -> None:
        """The zygote is gone: its children died with it (PDEATHSIG); exec from now on."""
        if self._sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(OSError("zygote is gone"))
        self._pending.clear()
        for pid, child in self._children.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            child.exited(-signal.SIGKILL)
        self._children.clear()
        log.warning("zygote is gone; workers will be exec'd from now on")

    async def spawn(self, args: list[str], cwd: Path, broker_fd: int) -> WorkerProcess:
        sock = self._sock
        if sock is None:
            return await self._fallback.spawn(args, cwd, broker_fd)
        self._ids += 1
        request_id = self._ids
        pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read end, write end)
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        try:
            argv = [*args, "--parent-pid", str(self.parent_pid)]
            request = {
                "op": "spawn",
                "id": request_id,
                "cwd": str(cwd),
                "argv": argv,
                "sandbox": True,
            }
            socket.send_fds(sock, [json.dumps(request).encode()], [*theirs, broker_fd])
        finally:
            for fd in theirs:
                os.close(fd)
        try:
            pid = await waiter
        except OSError:
            for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
                os.close(fd)
            raise
        child = ZygoteChild(
            pid,
            await _write_stream(pipes[0][1]),
            await _read_stream(pipes[1][0]),
            await _read_stream(pipes[2][0]),
        )
        self._children[pid] = child
        return child

    async def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
