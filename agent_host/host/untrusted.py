"""Text from a worker, made safe before the host shows it, and the rate at which it may.

A plugin chooses every byte of its rule ids, messages, attributes, log records and output. On a
terminal or in a console log line, an ESC starts a control sequence (clear the screen, move the
cursor, recolour a line), a CR or LF starts a line that looks like the host's own, and Unicode
bidi overrides reorder what is read. ``printable`` escapes all of them (C0, DEL, C1, line and
paragraph separators, bidi controls) as ``\\xNN`` or ``\\uNNNN`` and cuts the text to a bound;
``RateLimit`` bounds how many lines a plugin gets per second, whatever its worker sends. The
findings file is JSON, which escapes control characters itself; it keeps the exact text.
"""

from __future__ import annotations

import re
from typing import Final

TEXT_MAX: Final = 4096
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` cut to ``limit`` characters, with every control character escaped."""
    safe = _UNSAFE.sub(_escape, text[:limit])
    if len(text) > limit:
        safe += f" ... ({len(text) - limit} characters cut)"
    return safe


class RateLimit:
    """A token bucket: ``per_s`` lines a second on average, bursts up to ``per_s``."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._allowance = per_s
        self._last: float | None = None
        #: Lines refused since the last report.
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._allowance = min(self.per_s, self._allowance + (now - self._last) * self.per_s)
        self._last = now
        if self._allowance < 1:
            self.suppressed += 1
            return False
        self._allowance -= 1
        return True

    def take_suppressed(self) -> int:
        """How many were refused since the last call (and start counting afresh)."""
        count, self.suppressed = self.suppressed, 0
        return count
