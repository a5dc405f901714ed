"""The operator's commands: list plugins (with quarantines), lift a quarantine, dead letters."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from agent_host.cli import paths
from agent_host.errors import UsageError
from agent_host.host.manifest import discover
from agent_host.host.store import StateStore
from agent_host.protocol import Event, message_to_json
from agent_host.sources.recording import RecordingWriter

EXIT_OK = 0
EXIT_NOTHING = 1


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def release(store: StateStore, name: str) -> int:
    """``plugins release NAME``: lift the quarantine of every version of NAME."""
    try:
        if not store.release(name):
            raise UsageError(name, "not quarantined")
    finally:
        store.close()
    print(f"released {name} from quarantine; it starts with the next host run")
    return EXIT_OK


def list_plugins(plugins_dir: Path, store: StateStore) -> int:
    """``plugins list``: each plugin found with its state, and each manifest error."""
    try:
        quarantined = store.quarantined()
    finally:
        store.close()
    discovery = discover(plugins_dir)
    held = 0
    for m in discovery.manifests:
        q = quarantined.get((m.name, m.version))
        if q is None:
            state = "ok"
        else:
            held += 1
            state = (
                f"quarantined since {_when(q.since)} (#{q.level}): {q.reason}; "
                f"next try on probation {_when(q.until)}"
            )
        print(
            f"{m.name:<24} {m.version:<10} {','.join(sorted(m.subscribe)):<22} "
            f"{m.entrypoint:<28} {state}"
        )
    for error in discovery.errors:
        print(f"error: {error}")
    print(
        f"{len(discovery.manifests)} usable, {len(discovery.errors)} with errors, "
        f"{held} quarantined"
    )
    return EXIT_OK if discovery.manifests else EXIT_NOTHING


def dead_letters(
    store: StateStore, plugin: str | None, as_json: bool, export: Path | None, purge: bool
) -> int:
    """List the dead letters; export their events as a recording; or purge them."""
    try:
        if purge:
            print(f"purged {store.purge_dead_letters(plugin)} dead letters")
            return EXIT_OK
        letters = store.dead_letters(plugin)
    finally:
        store.close()
    if export is not None:
        with paths.open_write("--export", export) as f:
            writer = RecordingWriter(f, binary=False)
            for letter in letters:
                writer.write(Event.FromString(letter.event))
        print(
            f"wrote {len(letters)} events to {export}; replay them with: agent-host replay {export}"
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
