"""Attestation: a signed report of what this host runs, for a verifier's nonce.

The report is an in-toto Statement (v1) in a DSSE envelope, signed with the host's Ed25519
key: its subjects are the measurements of the plugins the host runs, its predicate the agent's
version, the host, the time, the nonce, the signature policy, and for each plugin its name,
version, measurement, signer, state and the sandbox layers it gets (for a plugin the host
refused: its name, state "refused" and why). The verifier checks the signature, that its
nonce is the one in the report (a replayed report carries an old one), and, given the
measurements it expects, that exactly that content runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent_host.host.updates.signing import key_id

PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://agent-host.dev/attestation/v1"
#: The states in which a plugin's content is the host's to run (now, or on its restart).
RUNNING_STATES: Final = frozenset({"running", "starting", "backing_off"})


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(predicate: Mapping[str, Any]) -> dict[str, Any]:
    plugins = predicate["plugins"]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": p["name"], "digest": {"sha256": str(p["measurement"]).split(":", 1)[-1]}}
            for p in plugins
            if "measurement" in p  # not content the host refused
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": dict(predicate),
    }


def seal(document: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``document`` in a DSSE envelope signed with ``key``."""
    payload = json.dumps(document, sort_keys=True).encode()
    signature = key.sign(_pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }


class VerificationError(Exception):
    """The report does not show what the verifier asked for; the message says why."""


@dataclass(frozen=True, slots=True)
class Verified:
    predicate: dict[str, Any]

    @property
    def running(self) -> dict[str, str]:
        """The measurement of each plugin whose content runs."""
        return {
            p["name"]: p["measurement"]
            for p in self.predicate["plugins"]
            if p["state"] in RUNNING_STATES
        }


def open_envelope(
    envelope: Mapping[str, Any],
    key: Ed25519PublicKey,
    nonce: str,
    expected: Mapping[str, str] | None = None,
) -> Verified:
    """The report's predicate, if ``key`` signed it for ``nonce`` (and exactly the
    ``expected`` measurements run); raises VerificationError."""
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
        payload_type = envelope["payloadType"]
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"not a DSSE envelope: {exc}") from None
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"payload type {payload_type!r}, not {PAYLOAD_TYPE}")
    for signature in signatures:
        try:
            key.verify(signature, _pae(payload_type, payload))
            break
        except InvalidSignature:
            continue
    else:
        raise VerificationError(f"not signed by key {key_id(key)}")
    document = json.loads(payload)
    if document.get("_type") != STATEMENT_TYPE or document.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError("not an agent-host attestation statement")
    predicate = document["predicate"]
    if predicate.get("nonce") != nonce:
        raise VerificationError(f"nonce {predicate.get('nonce')!r} is not {nonce!r}")
    verified = Verified(predicate)
    if expected is not None and verified.running != dict(expected):
        differ = sorted(
            name
            for name in set(expected) | set(verified.running)
            if expected.get(name) != verified.running.get(name)
        )
        raise VerificationError(f"not the expected content: {', '.join(differ)}")
    return verified
