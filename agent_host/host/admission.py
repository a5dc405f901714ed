"""Admission: whether a plugin version may run on this host, and with what content.

Four questions, asked in this order, each with a reason when the answer is no:

- **caps**: does the manifest ask for no more than the operator allows (``caps.py``)?
- **snapshot**: the folder is measured and copied read-only once; what runs is that copy, so
  a change to the folder after the check cannot slip in (``updates/content.py``);
- **signature policy**: is that measurement signed by a trusted key, or one of the bundled
  plugins' as shipped (``updates/pins.py``), and if not, does the policy let it run anyway
  (``updates/signing.py``)?
- **validation** (new content in a reload): does it survive its own cases and a hostile corpus
  in a host of its own (``updates/validation.py``)?

The supervisor asks; admission answers and keeps the trusted keys. It starts nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import structlog

from agent_host.errors import ContentError
from agent_host.host.config import HostConfig, SignaturePolicy
from agent_host.host.manifest import Manifest
from agent_host.host.updates.content import Admitted, Content, snapshot
from agent_host.host.updates.pins import BUNDLED_SIGNER, is_pinned
from agent_host.host.updates.signing import load_public, vouched
from agent_host.host.updates.validation import HostFactory, Rejection, validate

log = structlog.get_logger("agent_host")


class Admission:
    """The content policy of one host: its caps, signature policy and trusted keys."""

    def __init__(self, config: HostConfig, content_dir: Path) -> None:
        """
        Raises:
            UsageError: a trusted key cannot be read.
        """
        self._config = config
        self._trusted = [load_public(path) for path in config.trusted_keys]
        self._content_dir: Final = content_dir
        #: The policy changed since the running plugins were admitted: the next reload admits
        #: them again.
        self.changed = False
        #: The plugins found but refused, and why (what ``attest`` and ``status`` report).
        self.refused: dict[str, str] = {}

    def reconfigure(self, config: HostConfig) -> None:
        """Admit under ``config``'s policy from now on.

        Raises:
            UsageError: a trusted key cannot be read; nothing is changed.
        """
        trusted = [load_public(path) for path in config.trusted_keys]  # first: may fail
        self._config, self._trusted = config, trusted
        self.changed = True

    def say_policy(self) -> None:
        """Say once, at start, that signatures go unchecked for want of a key."""
        if self._config.signatures is SignaturePolicy.WARN and not self._trusted:
            log.info("plugin signatures not checked: no trusted keys (--trusted-key)")

    def within_caps(self, manifests: Iterable[Manifest]) -> list[Manifest]:
        """The manifests that ask for no more than the operator's caps allow."""
        admitted = []
        found = set()
        for manifest in manifests:
            found.add(manifest.name)
            refusal = self._config.caps.check(manifest)
            if refusal is None:
                admitted.append(manifest)
                self.refused.pop(manifest.name, None)
            else:
                log.error("plugin refused: it asks for more than allowed", error=str(refusal))
                self.refused[manifest.name] = str(refusal)
        for gone in set(self.refused) - found:
            del self.refused[gone]
        return admitted

    def admit(self, manifest: Manifest) -> Admitted | None:
        """A read-only copy of the plugin's content as measured now, and who signed it; None
        if the signature policy refuses it."""
        try:
            content = snapshot(manifest.directory, self._content_dir)
        except ContentError as exc:
            log.error(
                "plugin refused: its content cannot be taken", plugin=manifest.name, error=str(exc)
            )
            self.refused[manifest.name] = str(exc)
            return None
        signer = self._signer_of(manifest, content)
        if signer is None:
            return None
        self.refused.pop(manifest.name, None)
        return Admitted(content, signer)

    def still_admitted(self, manifest: Manifest, content: Content) -> bool:
        """Whether running content passes the signature policy as it is now."""
        return self._signer_of(manifest, content) is not None

    def _signer_of(self, manifest: Manifest, content: Content) -> str | None:
        """Who signed the content ("" for nobody trusted); None if the policy refuses it."""
        policy = self._config.signatures
        if policy is SignaturePolicy.OFF:
            return ""
        if policy is SignaturePolicy.WARN and not self._trusted:
            return BUNDLED_SIGNER if is_pinned(content.measurement) else ""  # said at start
        check = vouched(manifest.directory, content.measurement, self._trusted)
        if check.signed:
            return check.signer
        if policy is SignaturePolicy.ENFORCE:
            log.error(
                "plugin refused: not signed by a trusted key",
                plugin=manifest.name,
                reason=check.problem,
                measurement=content.measurement,
            )
            self.refused[manifest.name] = f"not signed by a trusted key: {check.problem}"
            return None
        log.warning(
            "plugin not signed by a trusted key", plugin=manifest.name, reason=check.problem
        )
        return ""

    async def validate(
        self, manifest: Manifest, content: Content, host: HostFactory
    ) -> Rejection | None:
        """Run ``content`` over its own cases and the hostile corpus in a host of its own (made
        by ``host``); None if it passed."""
        copy = dataclasses.replace(manifest, directory=content.copy)
        rejection = await validate(copy, self._config, host)
        if rejection is None:
            log.info("plugin version validated", plugin=manifest.name, version=manifest.version)
        else:
            log.error(
                "plugin version rejected at validation; the running one stays",
                plugin=manifest.name,
                version=manifest.version,
                measurement=content.measurement,
                reason=rejection.reason,
                breaking_event=rejection.event,
            )
        return rejection
