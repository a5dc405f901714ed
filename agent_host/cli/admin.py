"""The operator's commands: list plugins (with quarantines), lift a quarantine, a plugin's
version history, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_host.cli import paths
from agent_host.errors import UsageError
from agent_host.host.caps import Caps
from agent_host.host.cgroups import Cgroups
from agent_host.host.config import HostConfig, SignaturePolicy
from agent_host.host.findings import CollectingSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Discovery, Manifest, discover
from agent_host.host.sandbox import describe, for_plugin, machine_report
from agent_host.host.spawn import probe_sandbox
from agent_host.host.store import StateStore
from agent_host.host.supervisor import Supervisor
from agent_host.host.updates import signing
from agent_host.host.updates.content import measure
from agent_host.protocol import Event, SandboxLayer, SandboxReport, message_to_json
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


def history(store: StateStore, name: str) -> int:
    """``plugins history NAME``: each version's measurement and what became of it, oldest first."""
    try:
        entries = store.history(name)
    finally:
        store.close()
    if not entries:
        print(f"no history of {name} in this state folder")
        return EXIT_NOTHING
    for entry in entries:
        digest = entry.measurement.removeprefix("sha256:")[:12]
        what = f"{entry.what:<15} {entry.detail}".rstrip()
        print(f"{_when(entry.time)}  {entry.version:<10} {digest:<12}  {what}")
    return EXIT_OK


def machine_sandbox() -> SandboxReport:
    """What a worker's sandbox holds on this machine, found as the host would at its start."""
    cgroups = Cgroups()
    try:
        return machine_report(asyncio.run(probe_sandbox()), cgroups)
    finally:
        cgroups.close()


def _granted(manifest: Manifest) -> str:
    grants = manifest.permissions
    read = ", ".join(grants.read) or "its own folder only"
    yes_no = {True: "yes", False: "no"}
    return f"read {read}; network {yes_no[grants.network]}; exec {yes_no[grants.exec]}"


def new_keys(prefix: Path) -> int:
    """``keys new --out PREFIX``: an Ed25519 key pair for signing plugins."""
    try:
        secret, public = signing.new_key_pair(prefix)
    except OSError as exc:
        raise UsageError("--out", f"cannot write {exc.filename}: {exc.strerror}") from None
    print(f"private key {secret} (keep it secret), public key {public} (give it to --trusted-key)")
    return EXIT_OK


def sign_plugin(directory: Path, key: Path) -> int:
    """``plugins sign DIR --key KEY``: sign the plugin's content as it is now."""
    if not (directory / "plugin.toml").is_file():
        raise UsageError(str(directory), "not a plugin folder (no plugin.toml)")
    private = signing.load_private(key)
    path, measurement = signing.sign(directory, private)
    print(
        f"signed {directory} ({measurement}) with key {signing.key_id(private.public_key())}"
        f": {path}"
    )
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class PluginView:
    """One plugin as an operator (``plugins list``) or a verifier (``attest``) sees it."""

    manifest: Manifest
    #: "ok", "quarantined" or "refused", and why, in words.
    state: str
    why: str
    measurement: str
    signer: str
    signature: str
    layers: list[SandboxLayer]


def _signature(
    manifest: Manifest, measurement: str, trusted: list[Ed25519PublicKey], policy: SignaturePolicy
) -> tuple[str, str]:
    """(signer, how the signature reads) by the policy."""
    if policy is SignaturePolicy.OFF:
        return "", "signatures not checked"
    verdict = signing.vouched(manifest.directory, measurement, trusted)
    if verdict.signed:
        return verdict.signer, f"signed by {verdict.signer}"
    return "", verdict.problem


def plugin_views(
    discovery: Discovery,
    store: StateStore,
    trusted_keys: list[Path],
    policy: SignaturePolicy,
    machine: SandboxReport,
) -> list[PluginView]:
    """Each usable plugin: its state by the quarantines, the caps and the signature policy,
    its content and the sandbox it gets on this machine."""
    try:
        quarantined = store.quarantined()
    finally:
        store.close()
    trusted = [signing.load_public(path) for path in trusted_keys]
    views = []
    for m in discovery.manifests:
        measurement = measure(m.directory)
        signer, signature = _signature(m, measurement, trusted, policy)
        state, why = "ok", ""
        q = quarantined.get((m.name, m.version))
        if q is not None:
            state = "quarantined"
            why = (
                f"since {_when(q.since)} (#{q.level}): {q.reason}; "
                f"next try on probation {_when(q.until)}"
            )
        refusal = Caps().check(m)
        if refusal is not None:
            state, why = "refused", f"(raise the cap to run it): {refusal.key}: {refusal.message}"
        elif policy is SignaturePolicy.ENFORCE and not signer:
            state, why = "refused", f"(--signatures enforce): {signature}"
        views.append(
            PluginView(m, state, why, measurement, signer, signature, for_plugin(machine, m))
        )
    return views


def failing_to_start(manifests: list[Manifest]) -> dict[str, str]:
    """Each plugin started in a sandboxed worker of a host of its own, as a run would start it
    (its module imported, its on_start run), then stopped: why each that did not start failed.
    The manifest alone cannot say that a module does not import."""

    async def check() -> dict[str, str]:
        config = HostConfig(state_dir=None, signatures=SignaturePolicy.OFF, shadow=False)
        sup = Supervisor(config, manifests, CollectingSink())
        try:
            await sup.start()
            return {n: r.reason for n, r in sup.plugins.items() if r.phase is not Phase.RUNNING}
        finally:
            await sup.stop()

    return asyncio.run(check()) if manifests else {}


def list_plugins(
    plugins_dir: list[Path], store: StateStore, trusted_keys: list[Path], policy: SignaturePolicy
) -> int:
    """``plugins list``: each plugin found with its state, its measurement and signer, what it
    is granted and which sandbox layers it gets here, and each manifest error."""
    discovery = discover(plugins_dir)
    machine = machine_sandbox()
    views = plugin_views(discovery, store, trusted_keys, policy, machine)
    failing = failing_to_start([view.manifest for view in views if view.state == "ok"])
    views = [
        dataclasses.replace(view, state="fails to start:", why=failing[view.manifest.name])
        if view.manifest.name in failing
        else view
        for view in views
    ]
    print(f"sandbox on this machine: {describe(list(machine.layers))}")
    for view in views:
        m = view.manifest
        state = f"{view.state} {view.why}" if view.why else view.state
        print(
            f"{m.name:<24} {m.version:<10} {','.join(sorted(m.subscribe)):<22} "
            f"{m.entrypoint:<28} {state}"
        )
        print(f"    content: {view.measurement}, {view.signature}")
        print(f"    granted: {_granted(m)}")
        print(f"    sandbox: {describe(view.layers)}")
    for error in discovery.errors:
        print(f"error: {error}")
    held = sum(view.state == "quarantined" for view in views)
    print(
        f"{len(discovery.manifests)} usable, {len(discovery.errors)} with errors, "
        f"{held} quarantined, {len(failing)} failing to start"
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
