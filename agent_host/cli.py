"""The ``agent-host`` command line: run, replay, plugins.

A user error (bad flag, missing file, no usable plugin) is one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import structlog

from agent_host import __version__, admin, logs
from agent_host.config import HostConfig
from agent_host.errors import AgentHostError
from agent_host.findings import FindingSink
from agent_host.manifest import discover
from agent_host.protocol import Event
from agent_host.sensors.replay import ReplaySource
from agent_host.sensors.synthetic import SyntheticSource
from agent_host.state import default_state_dir
from agent_host.stats import State
from agent_host.summary import render_table, summary_rows
from agent_host.supervisor import Supervisor

log = structlog.get_logger("agent_host")

EXIT_OK = 0
EXIT_NOTHING_RAN = 1
EXIT_USAGE = 2
EXIT_ABORTED = 130


def _default_plugins_dir() -> Path:
    """./plugins if there is one, else the example plugins beside the package (a checkout)."""
    here = Path("plugins")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "plugins"


def _add_host_options(p: argparse.ArgumentParser) -> None:
    defaults = HostConfig()
    p.add_argument(
        "--plugins",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of plugin folders (default: ./plugins)",
    )
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
        type=int,
        default=defaults.batch_size,
        help=f"events per batch (default {defaults.batch_size})",
    )
    p.add_argument(
        "--flush-ms",
        type=float,
        default=defaults.flush_interval_s * 1000,
        help="send a partial batch after this long (default %(default)s ms)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where quarantine and dead letters are kept (default: ~/.local/state/agent-host)",
    )
    p.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the end-of-run summary as JSON",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-host",
        description="Run detection plugins, each in its own sandboxed worker process.",
    )
    parser.add_argument("--version", action="version", version=f"agent-host {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run on a continuous source until SIGINT/SIGTERM")
    run.add_argument(
        "--source", default="synthetic", help="synthetic, or replay:FILE (default: synthetic)"
    )
    run.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: run until signalled)",
    )
    run.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="events per second of the synthetic source (default %(default)s)",
    )
    _add_host_options(run)

    replay = sub.add_parser("replay", help="run a recording through the plugins and exit")
    replay.add_argument("recording", type=Path, help="JSON Lines of events")
    _add_host_options(replay)

    plugins = sub.add_parser("plugins", help="list the plugins found, with validation errors")
    plugins.add_argument("--plugins", type=Path, default=None, metavar="DIR")
    plugins.add_argument("--state-dir", type=Path, default=None, metavar="DIR")
    plugins.add_argument("--release", metavar="NAME", help="lift the quarantine of plugin NAME")

    letters = sub.add_parser(
        "deadletters", help="the events set aside because they killed a plugin"
    )
    letters.add_argument("--state-dir", type=Path, default=None, metavar="DIR")
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


def _source_for(args: argparse.Namespace) -> AsyncIterable[Event] | None:
    if args.command == "replay":
        return ReplaySource(args.recording)
    spec: str = args.source
    if spec == "synthetic":
        return SyntheticSource(rate=args.rate)
    if spec.startswith("replay:"):
        return ReplaySource(Path(spec.removeprefix("replay:")))
    return None


async def _pump(
    source: AsyncIterable[Event], sup: Supervisor, stopping: asyncio.Event, deadline: float | None
) -> None:
    """Feed the source to the host until it ends, a signal comes, or the deadline passes.

    The loop checks between events rather than cancelling the source, so that no event is ever
    half-accepted.
    """
    iterator: AsyncIterator[Event] = aiter(source)
    async for event in iterator:
        await sup.publish(event)
        if stopping.is_set() or (deadline is not None and time.monotonic() >= deadline):
            break


async def _host(args: argparse.Namespace) -> int:
    plugins_dir: Path = args.plugins or _default_plugins_dir()
    if not plugins_dir.is_dir():
        log.error("plugins folder not found", path=str(plugins_dir))
        return EXIT_USAGE
    source = _source_for(args)
    if source is None:
        log.error("unknown source", source=args.source, known="synthetic, replay:FILE")
        return EXIT_USAGE
    if isinstance(source, ReplaySource) and not source.path.is_file():
        log.error("recording not found", path=str(source.path))
        return EXIT_USAGE
    config = HostConfig(
        batch_size=args.batch_size,
        flush_interval_s=args.flush_ms / 1000,
        state_dir=args.state_dir or default_state_dir(),
    )
    discovery = discover(plugins_dir)
    for error in discovery.errors:
        log.error("plugin skipped: bad manifest", error=str(error))
    if not discovery.manifests:
        log.error("no usable plugin", path=str(plugins_dir))
        return EXIT_NOTHING_RAN

    sink = FindingSink(args.findings, terminal=None if args.quiet else sys.stdout)
    sup = Supervisor(config, discovery.manifests, sink)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    aborting = asyncio.Event()

    def handle_signal(signum: signal.Signals) -> None:
        # Only note it; the main flow acts. A second signal means: stop now, do not drain.
        (aborting if stopping.is_set() else stopping).set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handle_signal, signum)
    started = time.monotonic()
    try:
        await sup.start()
        if not any(h.state is State.RUNNING for h in sup.handles.values()):
            log.error("no plugin could start")
            await sup.stop()
            return EXIT_NOTHING_RAN
        duration = getattr(args, "duration", 0.0)
        deadline = time.monotonic() + duration if duration else None
        pump = asyncio.ensure_future(_pump(source, sup, stopping, deadline))
        ender = asyncio.ensure_future(aborting.wait())
        stopper = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({pump, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():
            # The source is idle (waiting for events); nothing is half-accepted there.
            await asyncio.wait({pump}, timeout=0.5)
            pump.cancel()
        stopper.cancel()
        finish = asyncio.ensure_future(sup.stop())
        await asyncio.wait({finish, ender}, return_when=asyncio.FIRST_COMPLETED)
        if not finish.done():
            log.warning("second signal: stopping without draining")
            finish.cancel()
            await sup.abort()
            return EXIT_ABORTED
        ender.cancel()
    finally:
        sink.close()
    elapsed = time.monotonic() - started
    _report(args, sup, source, elapsed)
    return EXIT_OK


def _report(
    args: argparse.Namespace, sup: Supervisor, source: AsyncIterable[Event], elapsed: float
) -> None:
    rows = summary_rows(sup.handles.values())
    bad_lines = source.bad_lines if isinstance(source, ReplaySource) else 0
    print(
        f"\n{sup.accepted} events in {elapsed:.2f}s ({sup.accepted / elapsed:,.0f}/s), "
        f"{bad_lines} bad lines skipped, {sup.sink.written} findings"
    )
    print(render_table(rows))
    if args.summary_json:
        args.summary_json.write_text(
            json.dumps(
                {
                    "events": sup.accepted,
                    "bad_lines": bad_lines,
                    "findings": sup.sink.written,
                    "elapsed_s": elapsed,
                    "refused_sessions": sup.refused_sessions,
                    "plugins": rows,
                },
                indent=2,
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        if args.command == "plugins":
            return admin.list_plugins(
                args.plugins or _default_plugins_dir(), args.state_dir, args.release
            )
        if args.command == "deadletters":
            return admin.dead_letters(
                args.state_dir, args.plugin, args.json, args.export, args.purge
            )
        return asyncio.run(_host(args))
    except AgentHostError as exc:
        print(f"agent-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_ABORTED


if __name__ == "__main__":
    sys.exit(main())
