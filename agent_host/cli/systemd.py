"""systemd's notify protocol (``sd_notify(3)``), spoken from the host's own event loop.

Under ``Type=notify`` the service manager gives the daemon a datagram socket in
``NOTIFY_SOCKET`` and, with ``WatchdogSec=``, a period in ``WATCHDOG_USEC``. The host says
``READY=1`` once every plugin has started or been set aside, ``STATUS=`` with its counts,
``WATCHDOG=1`` at half the period, and ``STOPPING=1`` when it begins to drain. The pings come
from a task of the event loop, so a wedged loop stops them and systemd restarts the service.

Both variables are taken out of the environment at once (as ``sd_notify`` does when asked to
unset them): a plugin's worker must never be able to say ready, or alive, for the host.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("agent_host")

#: How often STATUS= is refreshed when there is no watchdog to ride on.
STATUS_INTERVAL_S: Final = 5.0
UNIT_NAME: Final = "agent-host.service"
UNIT_TEMPLATE: Final = Path(__file__).resolve().parent / UNIT_NAME


def unit_text(command: str | None = None) -> str:
    """The shipped unit, its ExecStart naming ``command`` (the Debian package's), else the
    interpreter this agent-host runs from."""
    return UNIT_TEMPLATE.read_text().replace("@EXEC@", command or f"{sys.executable} -m agent_host")


def install_unit(folder: Path) -> Path:
    """Write the unit into ``folder`` (systemd's /etc/systemd/system by default)."""
    target = folder / UNIT_NAME
    target.write_text(unit_text())
    return target


class Notifier:
    """The host's end of NOTIFY_SOCKET; every call is a no-op when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        watchdog_pid = env.pop("WATCHDOG_PID", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        #: The watchdog period, in seconds (0: no watchdog).
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and mine else 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:  # said once: systemd may be restarting; pings go on
                self._failed = True
                log.error("systemd notify socket refused a message", error=exc.strerror)
            return
        self._failed = False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    async def keep_alive(self, status: Callable[[], str]) -> None:
        """Until cancelled: WATCHDOG=1 at half the watchdog period, with a fresh STATUS=."""
        if self._socket is None:
            return
        interval = self.watchdog_s / 2 if self.watchdog_s else STATUS_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            if self.watchdog_s:
                self.send("WATCHDOG=1", f"STATUS={status()}")
            else:
                self.send(f"STATUS={status()}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
