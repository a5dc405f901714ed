"""Trust in the bundled plugins as shipped: their measurements, pinned in the package.

``--signatures enforce`` runs only content a trusted key signed. The plugins that ship with
agent-host are not signed by any operator's key, yet they are as trustworthy as the host's own
code, which comes from the same package: their measurements are pinned beside them
(``agent_host/plugins/measurements.json``, written by ``scripts/pin_bundled_plugins.py`` and
checked by a test, so that a change to a bundled plugin without a new pin fails CI). Content
whose measurement is pinned is admitted as signed by "agent-host VERSION (bundled)", wherever
it lies: the measurement covers every byte of it, so a copy is the same code. One changed
byte, and it is unsigned content like any other, refused under enforce.

Whoever can rewrite the pins can rewrite the host itself: they add no trust the package did
not already have.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Final

from agent_host import __version__

BUNDLED_DIR: Final = Path(__file__).resolve().parents[2] / "plugins"
PINS_FILE: Final = BUNDLED_DIR / "measurements.json"
#: Who the host says signed pinned content.
BUNDLED_SIGNER: Final = f"agent-host {__version__} (bundled)"


@functools.cache
def pinned_measurements() -> frozenset[str]:
    """The measurements of the bundled plugins as shipped (none if the file is unreadable)."""
    try:
        pins = json.loads(PINS_FILE.read_text())
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(pins, dict):
        return frozenset()
    return frozenset(str(m) for m in pins.values())


def is_pinned(measurement: str) -> bool:
    return measurement in pinned_measurements()
