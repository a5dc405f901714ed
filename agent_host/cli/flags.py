"""The flags several commands share, each declared once with its check, and the parser whose
errors are one line.

argparse's own errors (an unknown flag, a missing argument, a value that fails its check) come
out in the same one-line form as every other user error: ``agent-host: <what>: <why>``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from agent_host.cli.options import RUN_DEFAULTS as DEFAULTS
from agent_host.host.config import SignaturePolicy
from agent_host.host.exports.syslog import check_target
from agent_host.host.suppress import Suppression

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        print(f"agent-host: {message.removeprefix('argument ')}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


class _SuppressionArgument:
    """``--suppress``'s type: ``KEY=GLOB,...`` on the command line, a table in the file."""

    __name__ = "suppression"  # argparse names the type in its errors

    def __call__(self, text: str) -> Suppression:
        try:
            return Suppression.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    @staticmethod
    def from_table(table: dict[str, object]) -> Suppression:
        return Suppression.from_table(table)  # ValueError: the file's key and line are named


suppression = _SuppressionArgument()


def _number(kind: type[float] | type[int], check: str) -> Callable[[str], float]:
    """A converter that accepts ``kind`` values that are positive (``>0``) or not negative."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):  # nan passes every comparison below
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if check == ">0" and value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if check == ">=0" and value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    return convert


positive_float = _number(float, ">0")
positive_int = _number(int, ">0")
non_negative_float = _number(float, ">=0")
non_negative_int = _number(int, ">=0")


def port(text: str) -> int:
    """A TCP port, or 0 for none."""
    value = int(non_negative_int(text))
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"must be a port, 0 to 65535, got {text}")
    return value


def nats_url(text: str) -> str:
    """``--export``'s server: ``nats://HOST:PORT`` (or ``tls://``), several joined by commas
    (a cluster's seeds). Anything else would be accepted by nobody until the first connect,
    and the findings would wait in the spool for a server that cannot exist."""
    for url in text.split(","):
        try:
            parsed = urllib.parse.urlsplit(url.strip())
            port = parsed.port  # ValueError: not a number, or out of range
        except ValueError:
            port = -1
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname or port == -1:
            raise argparse.ArgumentTypeError(
                f"not a NATS server URL (nats://HOST:PORT): {url.strip()!r}"
            )
    return text


def http_url(text: str) -> str:
    """``--webhook``'s endpoint: ``http://`` or ``https://`` with a host (and a valid port)."""
    try:
        parsed = urllib.parse.urlsplit(text)
        parsed.port  # noqa: B018 - ValueError: not a number, or out of range
    except ValueError:
        parsed = urllib.parse.urlsplit("")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"not an HTTP URL (http[s]://HOST[:PORT]/PATH): {text!r}")
    return text


def http_header(text: str) -> str:
    """``--webhook-header``: ``Name: value``, a token's name and no line break."""
    name, colon, value = text.partition(":")
    if (
        not colon
        or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name)
        or set(value) & {"\r", "\n"}
    ):
        raise argparse.ArgumentTypeError(f"not an HTTP header ('Name: value'): {text!r}")
    return text


def syslog_target(text: str) -> str:
    """``--syslog``'s target: auto, journal, unix:PATH or udp://HOST:PORT."""
    try:
        return check_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_state_dir(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="where quarantines and dead letters are kept (default: ~/.local/state/agent-host)",
    )


def add_plugins_dir(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--plugins",
        type=Path,
        action="append",
        default=default,
        metavar="DIR",
        help="a folder of plugin folders; repeatable (default: the bundled plugins and "
        "/etc/agent-host/plugins, if it exists)",
    )


def add_trust_options(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--trusted-key",
        action="append",
        type=Path,
        default=[] if default is None else default,
        metavar="PUB",
        help="an Ed25519 public key (PEM) whose plugin signatures are trusted; repeatable",
    )
    p.add_argument(
        "--signatures",
        choices=[policy.value for policy in SignaturePolicy],
        default=DEFAULTS.signatures.value if default is None else default,
        help="enforce: a plugin not signed by a trusted key does not start; warn: it starts "
        "and the host says so; off (default %(default)s)",
    )


def add_control_socket(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control-socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="the running host's control socket (default: control.sock in the state folder)",
    )


def add_config(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="settings of agent-host run in TOML, flags overriding them (default: "
        "/etc/agent-host/agent-host.toml, if it exists)",
    )
