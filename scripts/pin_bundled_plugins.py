"""Pin the bundled plugins' measurements (agent_host/plugins/measurements.json).

Run it after changing a bundled plugin: ``--signatures enforce`` admits the bundled plugins
by these pins (``agent_host/host/updates/pins.py``), and a test fails while they are stale.

    python scripts/pin_bundled_plugins.py
"""

from __future__ import annotations

import json

from agent_host.host.manifest import discover
from agent_host.host.updates.content import measure
from agent_host.host.updates.pins import BUNDLED_DIR, PINS_FILE


def current() -> dict[str, str]:
    """Each bundled plugin's name and measurement, as its folder is now."""
    found = discover(BUNDLED_DIR)
    return {m.name: measure(m.directory) for m in sorted(found.manifests, key=lambda m: m.name)}


def main() -> None:
    PINS_FILE.write_text(json.dumps(current(), indent=2) + "\n")
    print(f"pinned {len(current())} bundled plugins in {PINS_FILE.name}")


if __name__ == "__main__":
    main()
