"""Signed plugins: an Ed25519 signature over a plugin's measurement, checked against the keys
the operator trusts.

``agent-host keys new`` makes a key pair (PEM; the private key 0600). ``agent-host plugins sign
DIR --key KEY`` writes ``DIR/plugin.sig``, a small JSON document: the measurement, the signing
key's id (the SHA-256 of its raw public key, as in-toto and TUF name keys) and the signature
over the measurement's bytes. The signature file is not part of the measurement, so signing
does not change what is signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent_host.errors import UsageError
from agent_host.host.updates.content import SIGNATURE_NAME, measure
from agent_host.host.updates.pins import BUNDLED_SIGNER, is_pinned


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair(prefix: Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``; returns their paths."""
    private = Ed25519PrivateKey.generate()
    secret, public = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    for path in (secret, public):
        if path.exists():
            raise UsageError(str(path), "exists already; not overwritten")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return secret, public


def load_private(path: Path, flag: str = "--key") -> Ed25519PrivateKey:
    """The private key in ``path``; a UsageError naming ``flag`` if it cannot be had."""
    key: object
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(flag, f"{path}: not an Ed25519 private key (PEM)")
    return key


def load_public(path: Path, flag: str = "--trusted-key") -> Ed25519PublicKey:
    """The public key in ``path``; a UsageError naming ``flag`` if it cannot be had."""
    key: object
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(flag, f"{path}: not an Ed25519 public key (PEM)")
    return key


def sign(directory: Path, key: Ed25519PrivateKey) -> tuple[Path, str]:
    """Sign the plugin in ``directory`` as it is now; returns the signature file's path and
    the measurement signed."""
    measurement = measure(directory)
    document = {
        "measurement": measurement,
        "keyid": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(measurement.encode())).decode(),
    }
    path = directory / SIGNATURE_NAME
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path, measurement


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Who signed a measurement, or why nobody trusted did."""

    signer: str
    problem: str

    @property
    def signed(self) -> bool:
        return not self.problem


def vouched(
    directory: Path, measurement: str, trusted: Iterable[Ed25519PublicKey]
) -> SignatureCheck:
    """Who vouches for ``measurement``: a bundled plugin's pin (``pins.py``), else a trusted
    key's signature in ``directory``."""
    if is_pinned(measurement):
        return SignatureCheck(BUNDLED_SIGNER, "")
    return verify(directory, measurement, trusted)


def verify(
    directory: Path, measurement: str, trusted: Iterable[Ed25519PublicKey]
) -> SignatureCheck:
    """Whether ``directory``'s signature file signs ``measurement`` with a trusted key."""
    path = directory / SIGNATURE_NAME
    try:
        document = json.loads(path.read_text())
        signature = base64.b64decode(document["signature"], validate=True)
        signed = str(document["measurement"])
        keyid = str(document["keyid"])
    except FileNotFoundError:
        return SignatureCheck("", "unsigned")
    except (OSError, ValueError, KeyError, TypeError):
        return SignatureCheck("", f"{SIGNATURE_NAME} is not a signature file")
    if signed != measurement:
        return SignatureCheck("", "the content changed since it was signed")
    for key in trusted:
        if key_id(key) == keyid:
            try:
                key.verify(signature, measurement.encode())
            except InvalidSignature:
                return SignatureCheck("", f"bad signature by key {keyid}")
            return SignatureCheck(keyid, "")
    return SignatureCheck("", f"signed by key {keyid}, which is not trusted")
