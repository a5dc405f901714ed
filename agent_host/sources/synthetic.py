"""A synthetic event source for demos and load: plausible Linux activity with a little malice.

Deterministic for a given seed. Roughly one event in ``attack_every`` is something a detection
should catch (a binary executed from /tmp, /dev/shm or /var/tmp).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Final

from agent_host.protocol import Event, FileEvent, NetworkEvent, ProcessEvent

_BENIGN_EXECS: Final = [
    (["/usr/bin/ls", "-la", "/var/log"], "/usr/bin/bash"),
    (["/usr/bin/grep", "-r", "TODO", "src/"], "/usr/bin/bash"),
    (["/usr/bin/python3", "manage.py", "migrate"], "/usr/bin/bash"),
    (["/usr/bin/git", "status"], "/usr/bin/zsh"),
    (["/usr/sbin/cron", "-f"], "/usr/lib/systemd/systemd"),
    (["/usr/bin/curl", "-sS", "https://example.org/health"], "/usr/bin/bash"),
]
_SUSPICIOUS_EXECS: Final = [
    (["/tmp/.cache/kworker", "-c", "pool.example:3333"], "/usr/bin/bash"),
    (["/dev/shm/x", "--daemon"], "/usr/bin/sh"),
    (["/var/tmp/update.sh"], "/usr/bin/bash"),
]
_FILES: Final = ["/etc/hosts", "/home/dev/notes.txt", "/tmp/build.log", "/var/log/syslog"]


def _exec(pid: int, cmdline: list[str], parent: str, cwd: str) -> ProcessEvent:
    return ProcessEvent(
        action=ProcessEvent.START,
        pid=pid,
        ppid=pid - 1,
        exe=cmdline[0],
        cmdline=cmdline,
        cwd=cwd,
        uid=1000,
        user="dev",
        parent_exe=parent,
        parent_cmdline=[parent],
    )


class SyntheticSource:
    """Generates ``rate`` events a second (0: at full speed), ``limit`` in all (0: no end)."""

    def __init__(
        self, rate: float = 200.0, limit: int = 0, seed: int = 1, attack_every: int = 50
    ) -> None:
        self.rate = rate
        self.limit = limit
        self._rng = random.Random(seed)
        self._attack_every = attack_every

    def make(self, n: int) -> Event:
        """The ``n``-th synthetic event."""
        rng = self._rng
        event = Event(source="synthetic")
        event.time.GetCurrentTime()
        pid = 1000 + n % 30000
        roll = n % 10
        if n % self._attack_every == 0:
            cmdline, parent = rng.choice(_SUSPICIOUS_EXECS)
            event.process.CopyFrom(_exec(pid, cmdline, parent, cwd="/tmp"))
        elif roll < 5:
            cmdline, parent = rng.choice(_BENIGN_EXECS)
            event.process.CopyFrom(_exec(pid, cmdline, parent, cwd="/home/dev"))
        elif roll < 8:
            event.file.CopyFrom(
                FileEvent(action=FileEvent.MODIFIED, path=rng.choice(_FILES), pid=pid)
            )
        else:
            event.network.CopyFrom(
                NetworkEvent(
                    action=NetworkEvent.CONNECT,
                    pid=pid,
                    exe="/usr/bin/curl",
                    protocol="tcp",
                    local_address="10.0.0.5",
                    local_port=40000 + n % 20000,
                    remote_address="93.184.215.14",
                    remote_port=443,
                )
            )
        return event

    async def __aiter__(self) -> AsyncIterator[Event]:
        n = 0
        start = time.monotonic()
        while not self.limit or n < self.limit:
            n += 1
            yield self.make(n)
            if self.rate:
                # Pace against the start time, so that rounding never accumulates into drift.
                ahead = n / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif n % 256 == 0:
                await asyncio.sleep(0)
