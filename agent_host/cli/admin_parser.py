"""The flags of the admin commands: plugins, keys, service, config, status and tail, attest,
deadletters."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_host.cli.flags import (
    Parser,
    add_config,
    add_control_socket,
    add_plugins_dir,
    add_state_dir,
    add_trust_options,
)


def add_plugins_group(sub: argparse._SubParsersAction[Parser]) -> None:
    plugins = sub.add_parser("plugins", help="the plugins: list, release from quarantine, new")
    # On the group and on each command: `plugins --state-dir X list` and `plugins list
    # --state-dir X` both work. SUPPRESS keeps a command's default from hiding the group's value.
    add_plugins_dir(plugins)
    add_state_dir(plugins)
    add_config(plugins)
    commands = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND")
    listing = commands.add_parser(
        "list", help="the plugins found, with validation errors and quarantines (the default)"
    )
    add_plugins_dir(listing, argparse.SUPPRESS)
    add_state_dir(listing, argparse.SUPPRESS)
    add_config(listing, argparse.SUPPRESS)
    add_trust_options(listing)
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
    add_state_dir(release, argparse.SUPPRESS)
    add_config(release, argparse.SUPPRESS)
    add_control_socket(release)
    restart = commands.add_parser(
        "restart",
        help="start a plugin afresh on a new worker in the running host (not counted as a failure)",
    )
    restart.add_argument("name", help="the plugin's name")
    add_state_dir(restart, argparse.SUPPRESS)
    add_config(restart, argparse.SUPPRESS)
    add_control_socket(restart)
    history = commands.add_parser(
        "history",
        help="each version of a plugin: validated, shadowed, promoted, rolled back, and why",
    )
    history.add_argument("name", help="the plugin's name")
    add_state_dir(history, argparse.SUPPRESS)
    add_plugins_dir(history, argparse.SUPPRESS)
    add_config(history, argparse.SUPPRESS)
    new = commands.add_parser("new", help="scaffold a plugin folder with a test")
    new.add_argument("name", help="the plugin's name (lowercase, digits, underscores)")
    new.add_argument(
        "--dir",
        type=Path,
        default=Path("plugins"),
        metavar="DIR",
        help="where to create it (default: ./plugins)",
    )


def add_status_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    status = sub.add_parser("status", help="what a running host is doing, per plugin and in all")
    add_state_dir(status)
    add_config(status)
    add_control_socket(status)
    status.add_argument("--json", action="store_true", help="the reply as JSON")
    tail = sub.add_parser("tail", help="a running host's findings as they are written (JSON)")
    add_state_dir(tail)
    add_config(tail)
    add_control_socket(tail)


def add_config_group(sub: argparse._SubParsersAction[Parser]) -> None:
    config = sub.add_parser("config", help="the daemon's config file")
    commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = commands.add_parser("check", help="check the config file; name each mistake")
    add_config(check)
    commands.add_parser(
        "default", help="print a config file with every setting commented out at its default"
    )


def add_service_group(sub: argparse._SubParsersAction[Parser]) -> None:
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


def add_completion_command(sub: argparse._SubParsersAction[Parser]) -> None:
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script, generated from this parser",
        description="bash: source it, or put it in /usr/share/bash-completion/completions/"
        "agent-host; zsh: put it as _agent-host in a folder of $fpath",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])


def add_keys_group(sub: argparse._SubParsersAction[Parser]) -> None:
    keys = sub.add_parser("keys", help="signing keys for plugins")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    new = commands.add_parser("new", help="make an Ed25519 key pair: PREFIX.key and PREFIX.pub")
    new.add_argument("--out", type=Path, required=True, metavar="PREFIX")


def add_attest_group(sub: argparse._SubParsersAction[Parser]) -> None:
    attest = sub.add_parser(
        "attest",
        help="a signed report of what the running host runs (asked over its control socket), "
        "for a verifier's nonce",
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
    add_state_dir(attest)
    add_config(attest)
    add_control_socket(attest)
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


def add_deadletters_command(sub: argparse._SubParsersAction[Parser]) -> None:
    letters = sub.add_parser(
        "deadletters", help="the events set aside because they killed a plugin"
    )
    add_state_dir(letters)
    add_config(letters)
    letters.add_argument("--plugin", metavar="NAME", help="only those of plugin NAME")
    letters.add_argument("--json", action="store_true", help="one JSON object per line")
    letters.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write their events as a recording, to replay after a fix",
    )
    letters.add_argument("--purge", action="store_true", help="delete them")
