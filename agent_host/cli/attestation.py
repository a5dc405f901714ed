"""``agent-host attest``: a signed report of what the running host runs, as it says over its
control socket (what it admitted and measured, who signed it, its sandbox layers, and what it
refused); ``attest verify``. Where no host runs, there is nothing to vouch for: it says so and
exits non-zero."""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
from pathlib import Path

from agent_host.cli import status
from agent_host.cli.paths import writable_file
from agent_host.errors import UsageError
from agent_host.host.updates import attestation, signing

EXIT_VERIFIED = 0
EXIT_NOT_VERIFIED = 1


def _host_key(given: Path | None, state_dir: Path) -> Path:
    """The host's private key: as given, or the state folder's, made on first use."""
    if given is not None:
        return given
    key = state_dir / "host.key"
    if not key.exists():
        _, public = signing.new_key_pair(state_dir / "host")
        print(f"made the host's key pair; give verifiers {public}", file=sys.stderr)
    return key


def report(args: argparse.Namespace, control: Path, state_dir: Path) -> int:
    """Write the signed report (a DSSE envelope) of what the host listening on ``control``
    runs to ``--out`` or stdout.

    Raises:
        UsageError: no host answers on ``control`` (nothing is signed then: a report of the
            folders would vouch for content no host checked).
    """
    if args.out is not None:
        writable_file("--out", args.out)  # before a key is made for a report that cannot be
    reply = status.ask(control)
    key = signing.load_private(_host_key(args.key, state_dir))
    plugins: list[dict[str, object]] = [
        {
            "name": p.name,
            "version": p.version,
            "measurement": p.measurement,
            "signer": p.signer,
            "state": p.state,
            "shadow": p.shadow,
            "sandbox_layers": list(p.sandbox_layers),
        }
        for p in reply.plugins
    ]
    plugins += [{"name": r.name, "state": "refused", "reason": r.reason} for r in reply.refused]
    predicate = {
        "agent_version": reply.host.version,
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nonce": args.nonce,
        "signatures": reply.host.signatures,
        "plugins": plugins,
    }
    envelope = attestation.seal(attestation.statement(predicate), key)
    text = json.dumps(envelope, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text)
        except OSError as exc:
            why = f"cannot write {args.out}: {exc.strerror or exc}"
            raise UsageError("--out", why) from None
    return 0


def verify(report_path: Path, host_key: Path, nonce: str, expected_path: Path | None) -> int:
    """Check a report; one line either way, exit 0 if it verifies, 1 if not."""
    key = signing.load_public(host_key, "--key")
    try:
        envelope = json.loads(report_path.read_text())
        expected = json.loads(expected_path.read_text()) if expected_path is not None else None
    except OSError as exc:
        raise UsageError(str(exc.filename), exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(report_path), f"not JSON: {exc}") from None
    if expected is not None and not (
        isinstance(expected, dict) and all(isinstance(v, str) for v in expected.values())
    ):
        raise UsageError(str(expected_path), "must map each plugin's name to its measurement")
    try:
        verified = attestation.open_envelope(envelope, key, nonce, expected)
    except attestation.VerificationError as exc:
        print(f"not verified: {exc}")
        return EXIT_NOT_VERIFIED
    running = ", ".join(f"{name} {m}" for name, m in sorted(verified.running.items()))
    print(f"verified: {verified.predicate['host']} at {verified.predicate['time']}: {running}")
    return EXIT_VERIFIED
