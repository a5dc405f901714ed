"""The operator's commands: list plugins (with quarantine), lift a quarantine, dead letters."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from agent_host.manifest import discover
from agent_host.protocol import Event, message_to_json
from agent_host.state import StateStore, default_state_dir

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def list_plugins(plugins_dir: Path, state_dir: Path | None, release: str | None) -> int:
    """Print each plugin found with its state, and each manifest error; or lift a quarantine."""
    store = StateStore(state_dir or default_state_dir())
    try:
        if release is not None:
            if store.release(release):
                print(f"released {release} from quarantine; it starts with the next host run")
                return EXIT_OK
            print(f"agent-host: {release} is not quarantined", file=sys.stderr)
            return EXIT_NOTHING
        if not plugins_dir.is_dir():
            print(f"agent-host: plugins folder not found: {plugins_dir}", file=sys.stderr)
            return EXIT_USAGE
        quarantined = store.quarantined()
        discovery = discover(plugins_dir)
        for m in discovery.manifests:
            q = quarantined.get(m.name)
            state = f"quarantined since {_when(q.since)}: {q.reason}" if q else "ok"
            print(
                f"{m.name:<24} {m.version:<10} {','.join(sorted(m.subscribe)):<22} "
                f"{m.entrypoint:<28} {state}"
            )
        for error in discovery.errors:
            print(f"error: {error}")
        print(
            f"{len(discovery.manifests)} usable, {len(discovery.errors)} with errors, "
            f"{sum(1 for m in discovery.manifests if m.name in quarantined)} quarantined"
        )
        return EXIT_OK if discovery.manifests else EXIT_NOTHING
    finally:
        store.close()


def dead_letters(
    state_dir: Path | None, plugin: str | None, as_json: bool, export: Path | None, purge: bool
) -> int:
    """List the dead letters; export their events as a recording; or purge them."""
    store = StateStore(state_dir or default_state_dir())
    try:
        if purge:
            print(f"purged {store.purge_dead_letters(plugin)} dead letters")
            return EXIT_OK
        letters = store.dead_letters(plugin)
        if export is not None:
            with export.open("w", encoding="utf-8") as f:
                for letter in letters:
                    f.write(message_to_json(Event.FromString(letter.event)) + "\n")
            print(
                f"wrote {len(letters)} events to {export}; replay them with: "
                f"agent-host replay {export}"
            )
            return EXIT_OK
        for letter in letters:
            event = Event.FromString(letter.event)
            if as_json:
                print(
                    json.dumps(
                        {
                            "id": letter.id,
                            "time": letter.time,
                            "plugin": letter.plugin,
                            "version": letter.version,
                            "seq": letter.seq,
                            "failure": letter.failure,
                            "event": json.loads(message_to_json(event)),
                        }
                    )
                )
            else:
                what = event.process.exe or event.file.path or event.network.remote_address
                print(
                    f"{letter.id:>6}  {_when(letter.time)}  {letter.plugin} {letter.version}  "
                    f"seq {letter.seq}  {letter.failure}  ({event.WhichOneof('kind')}: {what})"
                )
        if not as_json:
            print(f"{len(letters)} dead letters")
        return EXIT_OK
    finally:
        store.close()
