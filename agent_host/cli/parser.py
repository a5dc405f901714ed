"""The ``agent-host`` command's flags, each declared once with its check.

The flags of the commands that run the host and its sensors (run, replay, record) are here;
those several commands share are in ``flags.py``, the admin commands' in ``admin_parser.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent_host import __version__
from agent_host.cli.admin_parser import (
    add_attest_group,
    add_completion_command,
    add_config_group,
    add_deadletters_command,
    add_keys_group,
    add_plugins_group,
    add_service_group,
    add_status_commands,
)
from agent_host.cli.flags import (
    EXIT_USAGE,
    Parser,
    add_config,
    add_control_socket,
    add_plugins_dir,
    add_state_dir,
    add_trust_options,
    http_header,
    http_url,
    nats_url,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    suppression,
    syslog_target,
)
from agent_host.cli.options import LOG_DEFAULTS
from agent_host.cli.options import RUN_DEFAULTS as DEFAULTS
from agent_host.host.config import SandboxMode
from agent_host.sources.live import OverflowPolicy
from agent_host.sources.live.file_changes import DEFAULT_PATHS


def _add_host_options(p: argparse.ArgumentParser) -> None:
    add_plugins_dir(p)
    p.add_argument(
        "--findings",
        type=Path,
        default=None,
        metavar="FILE",
        help="append findings to this JSON Lines file",
    )
    p.add_argument(
        "--findings-max-mb",
        type=non_negative_int,
        default=DEFAULTS.findings_max_mb,
        metavar="MB",
        help="rotate the findings file when it passes this size: FILE.1, FILE.2, ... "
        "(default: never; SIGHUP reopens it, for logrotate)",
    )
    p.add_argument(
        "--findings-keep",
        type=positive_int,
        default=DEFAULTS.findings_keep,
        metavar="N",
        help="rotated findings files kept (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="do not show findings on the terminal")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS.batch_size,
        help="events per batch (default %(default)s)",
    )
    p.add_argument(
        "--flush-ms",
        type=positive_float,
        default=DEFAULTS.flush_ms,
        help="send a partial batch after this long (default %(default)s ms)",
    )
    add_state_dir(p)
    p.add_argument(
        "--sandbox",
        choices=[mode.value for mode in SandboxMode],
        default=DEFAULTS.sandbox.value,
        help="strict: no worker runs without every sandbox layer; warn: it runs without the "
        "layers this machine lacks, each said once (default here: %(default)s)",
    )
    add_trust_options(p)
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
        default=DEFAULTS.shadow_events,
        metavar="N",
        help="a changed plugin's new version runs in shadow (findings kept apart) until it has "
        "processed N events ... (default %(default)s)",
    )
    p.add_argument(
        "--shadow-seconds",
        type=positive_float,
        default=DEFAULTS.shadow_seconds,
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
        type=suppression,
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
        "--drain-timeout",
        type=positive_float,
        default=DEFAULTS.drain_timeout,
        metavar="S",
        help="on SIGTERM, SIGINT or the end of the source, wait at most S seconds for every "
        "accepted event to be delivered; the rest is counted undelivered (default %(default)s)",
    )
    p.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the end-of-run summary as JSON",
    )


def _add_live_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=DEFAULTS.duration,
        help="stop after this many seconds (default: run until signalled)",
    )
    p.add_argument(
        "--sensors",
        default=DEFAULTS.sensors,
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
        default=DEFAULTS.poll_interval,
        metavar="S",
        help="of the polling sensors (default %(default)s s)",
    )
    p.add_argument(
        "--queue-size",
        type=positive_int,
        default=DEFAULTS.queue_size,
        help="events buffered between sensors and host (default %(default)s)",
    )
    p.add_argument(
        "--overflow",
        choices=[p.value for p in OverflowPolicy],
        default=DEFAULTS.overflow.value,
        help="when that buffer is full: make sensors wait, or drop the oldest "
        "(counted and reported); default %(default)s",
    )


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one command (``run``), to read settings for it from a file."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def _add_log_options(p: argparse.ArgumentParser, *, global_: bool = False) -> None:
    """``--log-format`` and ``--log-level``: before the command (``agent-host --log-format json
    run``) or after it (``agent-host run --log-format json``, as the unit says it); after it,
    they leave the one before alone unless given (no default of their own)."""
    for flag, choices, helped in (
        (
            "--log-format",
            ["auto", "console", "json"],
            "auto: console style on a terminal, else JSON",
        ),
        ("--log-level", ["debug", "info", "warning", "error"], "default info"),
    ):
        dest = flag[2:].replace("-", "_")
        p.add_argument(
            flag,
            choices=choices,
            default=LOG_DEFAULTS[dest] if global_ else argparse.SUPPRESS,
            help=helped,
        )


def _log_options_everywhere(p: argparse.ArgumentParser) -> None:
    """The log's options on every command and subcommand below ``p``."""
    for action in p._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_log_options(command)
                _log_options_everywhere(command)


def build_parser() -> Parser:
    parser = Parser(
        prog="agent-host",
        description="Run detection plugins, each in its own sandboxed worker process.",
    )
    parser.add_argument("--version", action="version", version=f"agent-host {__version__}")
    _add_log_options(parser, global_=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run on live sensors (or another source) until signalled")
    run.add_argument(
        "--source", default=DEFAULTS.source, help="live, synthetic, or replay:FILE (default: live)"
    )
    run.add_argument(
        "--rate",
        type=positive_float,
        default=DEFAULTS.rate,
        help="events per second of the synthetic source (default %(default)s)",
    )
    _add_live_options(run)
    _add_host_options(run)
    add_config(run)
    add_control_socket(run)
    run.add_argument(
        "--export",
        type=nats_url,
        metavar="URL",
        help="also export findings and the summary to this NATS JetStream server "
        "(nats://HOST:PORT), through a spool on disk in the state folder",
    )
    run.add_argument(
        "--export-subject",
        default=DEFAULTS.export_subject,
        metavar="SUBJECT",
        help="subject prefix: SUBJECT.findings, SUBJECT.summary (default %(default)s)",
    )
    run.add_argument(
        "--export-spool-mb",
        type=positive_int,
        default=DEFAULTS.export_spool_mb,
        metavar="MB",
        help="each output's spool bound (export, webhook, syslog, program) while its receiver "
        "is away; past it findings are dropped from that output and counted "
        "(default %(default)s)",
    )
    run.add_argument(
        "--webhook",
        type=http_url,
        metavar="URL",
        help="also POST findings and the summary to this HTTP(S) endpoint as JSON Lines, "
        "through a spool on disk, retried while it fails",
    )
    run.add_argument(
        "--webhook-header",
        type=http_header,
        action="append",
        default=list(DEFAULTS.webhook_header),
        metavar="'NAME: VALUE'",
        help="a header to send with each webhook request (an Authorization token, say); "
        "may be repeated",
    )
    run.add_argument(
        "--syslog",
        type=syslog_target,
        nargs="?",
        const="auto",
        metavar="TARGET",
        help="also send findings to the system's log: journal (journald's own socket), "
        "unix:PATH or udp://HOST:PORT (RFC 5424 syslog); alone, the journal where it runs, "
        "else /dev/log",
    )
    run.add_argument(
        "--program",
        metavar="COMMAND",
        help="also pipe findings, one JSON per line, to this command's input (run by /bin/sh, "
        "kept running, started again if it exits)",
    )
    run.add_argument(
        "--metrics-port",
        type=port,
        default=DEFAULTS.metrics_port,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: off)",
    )
    run.add_argument(
        "--metrics-address",
        default=DEFAULTS.metrics_address,
        metavar="ADDRESS",
        help="where the metrics port listens (default %(default)s: this machine only)",
    )

    replay = sub.add_parser(
        "replay",
        help="run a recording through the plugins and exit (its quarantines and dead letters "
        "are kept apart from the daemon's unless --state-dir says otherwise)",
    )
    replay.add_argument("recording", type=Path, help="a recording: JSON Lines or binary")
    replay.add_argument(
        "--resume",
        action="store_true",
        help="go on where a stopped replay of this recording got to (every finding before it "
        "written), not from the top",
    )
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

    add_plugins_group(sub)
    add_keys_group(sub)
    add_service_group(sub)
    add_config_group(sub)
    add_completion_command(sub)
    add_status_commands(sub)
    add_attest_group(sub)
    add_deadletters_command(sub)
    _log_options_everywhere(parser)
    return parser


__all__ = ["EXIT_USAGE", "Parser", "build_parser", "command_parser"]
