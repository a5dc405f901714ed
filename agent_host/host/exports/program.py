"""Findings piped to a program's standard input (Falco's ``program_output``), one JSON per line.

The program is started with ``/bin/sh -c COMMAND`` and kept running: a window of records is
written to its input, and is taken once the program has read it all (the pipe is empty, not
merely accepted it). A program that exits, or stops reading for longer than the timeout, is
the receiver away: the window stays spooled, and the program is started again at the next
attempt (after the same growing pause as any output), so that a crashing consumer loses
nothing but may see the last window twice. What it writes on
stdout and stderr goes to the agent's log, tagged, at a bounded rate (every line the agent
writes stays in its log format).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import termios
from pathlib import Path
from typing import Final

from agent_host.host.exports.sender import DeliveryError, SpooledOutput, parse
from agent_host.host.output import relay_output

_WRITE_TIMEOUT_S: Final = 5.0
_EXIT_WAIT_S: Final = 2.0


class ProgramOutput(SpooledOutput):
    """Findings (and the run's summary) to ``command``'s standard input."""

    kind = "program"
    noun = "output"

    def __init__(self, command: str, spool_dir: Path, max_spool_mib: int) -> None:
        super().__init__(command, spool_dir, max_spool_mib)
        self._process: asyncio.subprocess.Process | None = None
        self._relays: list[asyncio.Task[None]] = []

    async def send(self, records: list[bytes]) -> int:
        process = await self._started()
        stdin = process.stdin
        assert stdin is not None
        try:
            stdin.write(b"".join(parse(line)[2] + b"\n" for line in records))
            await asyncio.wait_for(self._read_by(process), _WRITE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            code = process.returncode
            reason = f"exited with {code}" if code is not None else f"{type(exc).__name__}"
            raise DeliveryError(f"program {reason}") from exc
        return 0

    @staticmethod
    async def _read_by(process: asyncio.subprocess.Process) -> None:
        """Until the program has read what was written: the pipe accepting it is not enough,
        a program that exits leaves what it did not read in the pipe."""
        stdin = process.stdin
        assert stdin is not None
        await stdin.drain()
        pause = 0.001
        while True:
            pipe = stdin.transport.get_extra_info("pipe")
            if pipe is None or stdin.transport.is_closing():  # the program closed its end
                raise BrokenPipeError("input closed")
            if not _unread(pipe.fileno()):
                return
            if process.returncode is not None:
                raise BrokenPipeError("exited with input unread")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            await self.disconnect()
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                self.target,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # the operator's Ctrl-C stops the agent, which stops it
            )
            assert process.stdout is not None
            assert process.stderr is not None
            self._relays = [
                asyncio.ensure_future(relay_output(stream, "program output", process.pid, name))
                for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
            ]
            self._process = process
        return self._process

    async def disconnect(self) -> None:
        """Close the program's input (its end of file) and give it a moment to finish."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _EXIT_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for relay in self._relays:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay, _EXIT_WAIT_S)


def _unread(fd: int) -> int:
    """Bytes in the pipe of ``fd`` not yet read by the other end (FIONREAD: either end of a
    Linux pipe answers for the pipe)."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]
