"""The ``agent-host`` command's flags, each declared once with its check.

argparse's own errors (an unknown flag, a missing argument, a value that fails its check) come
out in the same one-line form as every other user error: ``agent-host: <what>: <why>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from agent_host import __version__
from agent_host.host.config import HostConfig, SandboxMode, SignaturePolicy
from agent_host.host.suppress import Suppression
from agent_host.sources.live import OverflowPolicy
from agent_host.sources.live.file_changes import DEFAULT_PATHS

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


_suppression = _SuppressionArgument()


def _number(kind: type[float] | type[int], check: str) -> Callable[[str], float]:
    """A converter that accepts ``kind`` values that are positive (``>0``) or not negative."""

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
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


def _add_state_dir(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="where quarantines and dead letters are kept (default: ~/.local/state/agent-host)",
    )


def _add_plugins_dir(p: argparse.ArgumentParser, default: object = None) -> None:
    p.add_argument(
        "--plugins",
        type=Path,
        action="append",
        default=default,
        metavar="DIR",
        help="a folder of plugin folders; repeatable (default: the bundled plugins and "
        "/etc/agent-host/plugins, if it exists)",
    )


def _add_host_options(p: argparse.ArgumentParser) -> None:
    defaults = HostConfig()
    _add_plugins_dir(p)
    p.add_argument(
        "--findings",
        type=Path,
        default=None,
        metavar="FILE",
        help="append findings to this JSON Lines file",
    )
    p.add_argument("--quiet", action="store_true", help="do not show findings on the terminal")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="events per batch (default %(default)s)",
    )
    p.add_argument(
        "--flush-ms",
        type=positive_float,
        default=defaults.flush_interval_s * 1000,
        help="send a partial batch after this long (default %(default)s ms)",
    )
    _add_state_dir(p)
    p.add_argument(
        "--sandbox",
        choices=[mode.value for mode in SandboxMode],
        default=defaults.sandbox,
        help="strict: no worker runs without every sandbox layer; warn: it runs without the "
        "layers this machine lacks, each said once (default here: %(default)s)",
    )
    _add_trust_options(p)
    p.add_argument(
        "--allow-network",
        action="store_true",
        help="let a manifest be granted the network ([permissions] network = true)",
    )
    p.add_argument(
        "--allow-exec",
        action="store_true",
        help="let a manifest be granted executing programs ([permissions] exec = true)",
    )
    p.add_argument(
        "--shadow-events",
        type=positive_int,
        default=defaults.shadow_events,
        metavar="N",
        help="a changed plugin's new version runs in shadow (findings kept apart) until it has "
        "processed N events ... (default %(default)s)",
    )
    p.add_argument(
        "--shadow-seconds",
        type=positive_float,
        default=defaults.shadow_s,
        metavar="S",
        help="... or run S seconds without a fault; then it is promoted (default %(default)s)",
    )
    p.add_argument(
        "--no-shadow",
        dest="shadow",
        action="store_false",
        help="replace a changed plugin at once, without a shadow run",
    )
    p.add_argument(
        "--suppress",
        action="append",
        default=[],
        type=_suppression,
        metavar="KEY=GLOB,...",
        help="drop (and count) findings matching all of plugin=, rule=, process=, path=, "
        "user= (globs), with reason=; repeatable; in the config file, [[suppress]] tables",
    )
    p.add_argument(
        "--no-allowlist",
        dest="allowlist",
        action="store_false",
        help="report what package managers do too (their writes of units, cron, PAM files)",
    )
    p.add_argument(
        "--no-watch-plugins",
        dest="watch_plugins",
        action="store_false",
        help="do not reload when the plugins folder changes (SIGHUP still does)",
    )
    p.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the end-of-run summary as JSON",
    )


def _add_trust_options(p: argparse.ArgumentParser, default: object = None) -> None:
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
        default="warn" if default is None else default,
        help="enforce: a plugin not signed by a trusted key does not start; warn: it starts "
        "and the host says so; off (default %(default)s)",
    )


def _add_live_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=0.0,
        help="stop after this many seconds (default: run until signalled)",
    )
    p.add_argument(
        "--sensors",
        default="process,file,network",
        help="live sensors to run (default: %(default)s)",
    )
    p.add_argument(
        "--watch",
        action="append",
        default=None,
        metavar="PATH",
        help=f"folder the file sensor watches, recursively; repeatable "
        f"(default: {' '.join(DEFAULT_PATHS)})",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="paths the file sensor ignores; repeatable",
    )
    p.add_argument(
        "--poll-interval",
        type=positive_float,
        default=0.5,
        metavar="S",
        help="of the polling sensors (default %(default)s s)",
    )
    p.add_argument(
        "--queue-size",
        type=positive_int,
        default=65_536,
        help="events buffered between sensors and host (default %(default)s)",
    )
    p.add_argument(
        "--overflow",
        choices=[p.value for p in OverflowPolicy],
        default="block",
        help="when that buffer is full: make sensors wait, or drop the oldest "
        "(counted and reported); default %(default)s",
    )


def _add_plugins_group(sub: argparse._SubParsersAction[Parser]) -> None:
    plugins = sub.add_parser("plugins", help="the plugins: list, release from quarantine, new")
    # On the group and on each command: `plugins --state-dir X list` and `plugins list
    # --state-dir X` both work. SUPPRESS keeps a command's default from hiding the group's value.
    _add_plugins_dir(plugins)
    _add_state_dir(plugins)
    commands = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND")
    listing = commands.add_parser(
        "list", help="the plugins found, with validation errors and quarantines (the default)"
    )
    _add_plugins_dir(listing, argparse.SUPPRESS)
    _add_state_dir(listing, argparse.SUPPRESS)
    _add_trust_options(listing)
    signing = commands.add_parser(
        "sign", help="sign a plugin folder's content (writes DIR/plugin.sig)"
    )
    signing.add_argument("dir", type=Path, metavar="DIR", help="the plugin's folder")
    signing.add_argument(
        "--key", type=Path, required=True, metavar="KEY", help="the Ed25519 private key (PEM)"
    )
    release = commands.add_parser(
        "release", help="lift the quarantine of a plugin (a running host starts it at once)"
    )
    release.add_argument("name", help="the plugin's name")
    _add_state_dir(release, argparse.SUPPRESS)
    _add_control_socket(release)
    restart = commands.add_parser(
        "restart",
        help="start a plugin afresh on a new worker in the running host (not counted as a failure)",
    )
    restart.add_argument("name", help="the plugin's name")
    _add_state_dir(restart, argparse.SUPPRESS)
    _add_control_socket(restart)
    history = commands.add_parser(
        "history",
        help="each version of a plugin: validated, shadowed, promoted, rolled back, and why",
    )
    history.add_argument("name", help="the plugin's name")
    _add_state_dir(history, argparse.SUPPRESS)
    new = commands.add_parser("new", help="scaffold a plugin folder with a test")
    new.add_argument("name", help="the plugin's name (lowercase, digits, underscores)")
    new.add_argument(
        "--dir",
        type=Path,
        default=Path("plugins"),
        metavar="DIR",
        help="where to create it (default: ./plugins)",
    )


def _add_control_socket(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control-socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="the running host's control socket (default: control.sock in the state folder)",
    )


def _add_status_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    status = sub.add_parser("status", help="what a running host is doing, per plugin and in all")
    _add_state_dir(status)
    _add_control_socket(status)
    status.add_argument("--json", action="store_true", help="the reply as JSON")
    tail = sub.add_parser("tail", help="a running host's findings as they are written (JSON)")
    _add_state_dir(tail)
    _add_control_socket(tail)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="settings of agent-host run in TOML, flags overriding them (default: "
        "/etc/agent-host/agent-host.toml, if it exists)",
    )


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one command (``run``), to read settings for it from a file."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def _add_config_group(sub: argparse._SubParsersAction[Parser]) -> None:
    config = sub.add_parser("config", help="the daemon's config file")
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser("check", help="check the config file; name each mistake")
    _add_config(check)


def _add_service_group(sub: argparse._SubParsersAction[Parser]) -> None:
    service = sub.add_parser("service", help="run agent-host as a systemd service")
    commands = service.add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    commands.add_parser("unit", help="print the systemd unit (Type=notify, watchdog, hardening)")
    install = commands.add_parser("install", help="write the systemd unit for this install")
    install.add_argument(
        "--dest",
        type=Path,
        default=Path("/etc/systemd/system"),
        metavar="DIR",
        help="where to write agent-host.service (default %(default)s)",
    )


def _add_keys_group(sub: argparse._SubParsersAction[Parser]) -> None:
    keys = sub.add_parser("keys", help="signing keys for plugins")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    new = commands.add_parser("new", help="make an Ed25519 key pair: PREFIX.key and PREFIX.pub")
    new.add_argument("--out", type=Path, required=True, metavar="PREFIX")


def _add_attest_group(sub: argparse._SubParsersAction[Parser]) -> None:
    attest = sub.add_parser(
        "attest", help="a signed report of the plugins this host runs, for a verifier's nonce"
    )
    attest.add_argument("--nonce", help="the verifier's nonce, echoed in the signed report")
    attest.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="KEY",
        help="the host's Ed25519 private key (default: host.key in the state folder, made on "
        "first use beside host.pub)",
    )
    attest.add_argument("-o", "--out", type=Path, default=None, metavar="FILE")
    _add_plugins_dir(attest)
    _add_state_dir(attest)
    _add_trust_options(attest)
    commands = attest.add_subparsers(dest="attest_command", metavar="COMMAND")
    verify = commands.add_parser("verify", help="check a report: signature, nonce, content")
    verify.add_argument("report", type=Path, metavar="REPORT")
    verify.add_argument("--key", dest="host_key", type=Path, required=True, metavar="HOST.pub")
    verify.add_argument("--nonce", dest="verify_nonce", required=True)
    verify.add_argument(
        "--expected",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON: each plugin's name and the measurement that must run, and no other",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="agent-host",
        description="Run detection plugins, each in its own sandboxed worker process.",
    )
    parser.add_argument("--version", action="version", version=f"agent-host {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run on live sensors (or another source) until signalled")
    run.add_argument(
        "--source", default="live", help="live, synthetic, or replay:FILE (default: live)"
    )
    run.add_argument(
        "--rate",
        type=positive_float,
        default=200.0,
        help="events per second of the synthetic source (default %(default)s)",
    )
    _add_live_options(run)
    _add_host_options(run)
    _add_config(run)
    _add_control_socket(run)
    run.add_argument(
        "--export",
        metavar="URL",
        help="also export findings and the summary to this NATS JetStream server "
        "(nats://HOST:PORT), through a spool on disk in the state folder",
    )
    run.add_argument(
        "--export-subject",
        default="agent-host",
        metavar="SUBJECT",
        help="subject prefix: SUBJECT.findings, SUBJECT.summary (default %(default)s)",
    )
    run.add_argument(
        "--export-spool-mb",
        type=positive_int,
        default=64,
        metavar="MB",
        help="the spool's bound while the server is away; past it findings are dropped from "
        "the export and counted (default %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=non_negative_int,
        default=0,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: off)",
    )
    run.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="where the metrics port listens (default %(default)s: this machine only)",
    )

    replay = sub.add_parser(
        "replay",
        help="run a recording through the plugins and exit (its quarantines and dead letters "
        "are kept apart from the daemon's unless --state-dir says otherwise)",
    )
    replay.add_argument("recording", type=Path, help="a recording: JSON Lines or binary")
    _add_host_options(replay)

    record = sub.add_parser("record", help="write live events to a recording")
    record.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    record.add_argument(
        "--format",
        choices=["jsonl", "binary"],
        default="jsonl",
        help="JSON Lines (readable) or binary (fast to replay); replay tells them apart by "
        "content (default %(default)s)",
    )
    _add_live_options(record)

    _add_plugins_group(sub)
    _add_keys_group(sub)
    _add_service_group(sub)
    _add_config_group(sub)
    _add_status_commands(sub)
    _add_attest_group(sub)

    letters = sub.add_parser(
        "deadletters", help="the events set aside because they killed a plugin"
    )
    _add_state_dir(letters)
    letters.add_argument("--plugin", metavar="NAME", help="only those of plugin NAME")
    letters.add_argument("--json", action="store_true", help="one JSON object per line")
    letters.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write their events as a recording, to replay after a fix",
    )
    letters.add_argument("--purge", action="store_true", help="delete them")
    return parser
