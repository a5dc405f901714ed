"""Signals that arrive before the host's event loop can take them: noted, never given their
default action.

The default action of SIGTERM and SIGHUP is to end the process, with no summary and workers
left to find their parent gone. A service manager may send SIGTERM at any moment, the first
third of a second included, while the command is still importing. So the ``agent-host``
command (``entry.py``) notes these signals from its first instruction, before it imports
anything else; the host takes the noted ones in as its own once it runs
(``cli.run._Signals``), and every other command puts the defaults back (a noted SIGINT or
SIGTERM then ends it as the signal would have). Importing ``agent_host.cli`` as a library
changes no handler.
"""

from __future__ import annotations

import signal
import types
from typing import Final

#: The signals noted before the host takes them over.
CAUGHT: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Signals noted so far, in order.
pending: list[signal.Signals] = []
_catching = False


def _note(signum: int, frame: types.FrameType | None) -> None:
    del frame
    pending.append(signal.Signals(signum))


def catch() -> None:
    """Note CAUGHT signals from now on, until the host's loop or ``release`` takes them."""
    global _catching  # noqa: PLW0603  (one process, one set of handlers)
    _catching = True
    for signum in CAUGHT:
        signal.signal(signum, _note)


def release() -> signal.Signals | None:
    """Put the default handlers back (a command that is not the host); the first noted SIGINT
    or SIGTERM, which the caller ends on as the signal would have ended it."""
    if not _catching:
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    return next((s for s in pending if s != signal.SIGHUP), None)


def take() -> list[signal.Signals]:
    """The signals noted so far, which the caller now answers for; forgotten here."""
    taken = list(pending)
    pending.clear()
    return taken
