"""The ``agent-host`` command line: run, replay, record, plugins, deadletters.

A user error (bad flag, missing file, no usable plugin) is one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path

import structlog

from agent_host import __version__, admin, logs, scaffold
from agent_host.config import HostConfig
from agent_host.errors import AgentHostError
from agent_host.findings import FindingSink
from agent_host.manifest import discover
from agent_host.protocol import Event, message_to_json
from agent_host.sensors.file import DEFAULT_PATHS
from agent_host.sensors.hub import OverflowPolicy, SensorHub, build_hub
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
        help="events per batch (default %(default)s)",
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


def _add_live_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=float,
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
        type=float,
        default=0.5,
        metavar="S",
        help="of the polling sensors (default %(default)s s)",
    )
    p.add_argument(
        "--queue-size",
        type=int,
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

    run = sub.add_parser("run", help="run on live sensors (or another source) until signalled")
    run.add_argument(
        "--source", default="live", help="live, synthetic, or replay:FILE (default: live)"
    )
    run.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="events per second of the synthetic source (default %(default)s)",
    )
    _add_live_options(run)
    _add_host_options(run)

    replay = sub.add_parser("replay", help="run a recording through the plugins and exit")
    replay.add_argument("recording", type=Path, help="JSON Lines of events")
    _add_host_options(replay)

    record = sub.add_parser("record", help="write live events to a recording")
    record.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    _add_live_options(record)

    plugins = sub.add_parser("plugins", help="list the plugins found, with validation errors")
    plugins.add_argument("--plugins", type=Path, default=None, metavar="DIR")
    plugins.add_argument("--state-dir", type=Path, default=None, metavar="DIR")
    plugins.add_argument("--release", metavar="NAME", help="lift the quarantine of plugin NAME")

    plugin = sub.add_parser("plugin", help="tools for plugin authors")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True)
    new = plugin_sub.add_parser("new", help="scaffold a plugin folder with a test")
    new.add_argument("name", help="the plugin's name (lowercase, digits, underscores)")
    new.add_argument(
        "--dir",
        type=Path,
        default=Path("plugins"),
        metavar="DIR",
        help="where to create it (default: ./plugins)",
    )

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


def _hub(args: argparse.Namespace, exclude: list[str]) -> SensorHub:
    """The live sensors, never watching the agent's own files (that way lies a feedback loop)."""
    own = [f"{tempfile.gettempdir()}/agent-host-*", *exclude]
    return build_hub(
        [s.strip() for s in args.sensors.split(",") if s.strip()],
        watch=args.watch or list(DEFAULT_PATHS),
        exclude=[*args.exclude, *own],
        poll_interval_s=args.poll_interval,
        capacity=args.queue_size,
        policy=OverflowPolicy(args.overflow),
    )


def _open_source(args: argparse.Namespace, exclude: list[str]) -> AsyncIterable[Event]:
    """The event source the command asks for; raises ValueError with a user-facing message."""
    spec = f"replay:{args.recording}" if args.command == "replay" else args.source
    if spec == "live":
        return _hub(args, exclude)
    if spec == "synthetic":
        return SyntheticSource(rate=args.rate)
    if spec.startswith("replay:"):
        source = ReplaySource(Path(spec.removeprefix("replay:")))
        if not source.path.is_file():
            raise ValueError(f"recording not found: {source.path}")
        return source
    raise ValueError(f"unknown source {spec!r}; known: live, synthetic, replay:FILE")


class _Signals:
    """SIGINT/SIGTERM: the first asks for a graceful stop, a second for an immediate one."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.aborting = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._handle)

    def _handle(self) -> None:
        # Only note it; the main flow acts.
        (self.aborting if self.stopping.is_set() else self.stopping).set()

    def stop_after(self, seconds: float) -> None:
        if seconds:
            asyncio.get_running_loop().call_later(seconds, self.stopping.set)


async def _feed(
    source: AsyncIterable[Event], take: Callable[[Event], Awaitable[object]], signals: _Signals
) -> None:
    """Hand every event of ``source`` to ``take`` until the source ends or a stop is asked.

    Never cancelled mid-event: it checks between events, and a live source ends when its hub
    is stopped, so no event is ever half-accepted.
    """
    async for event in source:
        await take(event)
        if signals.stopping.is_set():
            break


async def _run_source(
    source: AsyncIterable[Event], take: Callable[[Event], Awaitable[object]], signals: _Signals
) -> None:
    """Feed until the source ends or a stop is asked; stop live sensors either way."""
    hub = source if isinstance(source, SensorHub) else None
    if hub is not None:
        hub.start()
    feeding = asyncio.ensure_future(_feed(source, take, signals))
    stopping = asyncio.ensure_future(signals.stopping.wait())
    await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if hub is not None:
        await asyncio.to_thread(hub.stop)
        hub.report()
    await feeding


async def _host(args: argparse.Namespace) -> int:
    plugins_dir: Path = args.plugins or _default_plugins_dir()
    if not plugins_dir.is_dir():
        log.error("plugins folder not found", path=str(plugins_dir))
        return EXIT_USAGE
    state_dir = args.state_dir or default_state_dir()
    own_files = [str(p) for p in (args.findings, state_dir) if p is not None]
    try:
        source = _open_source(args, [*own_files, f"{state_dir}/*"])
    except ValueError as exc:
        log.error("bad source", error=str(exc))
        return EXIT_USAGE
    config = HostConfig(
        batch_size=args.batch_size, flush_interval_s=args.flush_ms / 1000, state_dir=state_dir
    )
    discovery = discover(plugins_dir)
    for error in discovery.errors:
        log.error("plugin skipped: bad manifest", error=str(error))
    if not discovery.manifests:
        log.error("no usable plugin", path=str(plugins_dir))
        return EXIT_NOTHING_RAN

    sink = FindingSink(args.findings, terminal=None if args.quiet else sys.stdout)
    sup = Supervisor(config, discovery.manifests, sink)
    signals = _Signals()
    started = time.monotonic()
    try:
        await sup.start()
        if not any(h.state is State.RUNNING for h in sup.handles.values()):
            log.error("no plugin could start")
            await sup.stop()
            return EXIT_NOTHING_RAN
        signals.stop_after(getattr(args, "duration", 0.0))
        await _run_source(source, sup.publish, signals)
        finish = asyncio.ensure_future(sup.stop())
        aborting = asyncio.ensure_future(signals.aborting.wait())
        await asyncio.wait({finish, aborting}, return_when=asyncio.FIRST_COMPLETED)
        if not finish.done():
            log.warning("second signal: stopping without draining")
            finish.cancel()
            await sup.abort()
            return EXIT_ABORTED
        aborting.cancel()
    finally:
        sink.close()
    _report(args, sup, source, time.monotonic() - started)
    return EXIT_OK


def _report(
    args: argparse.Namespace, sup: Supervisor, source: AsyncIterable[Event], elapsed: float
) -> None:
    rows = summary_rows(sup.handles.values())
    bad_lines = source.bad_lines if isinstance(source, ReplaySource) else 0
    summary: dict[str, object] = {
        "events": sup.accepted,
        "bad_lines": bad_lines,
        "events_without_kind": sup.rejected_events,
        "findings": sup.sink.written,
        "elapsed_s": elapsed,
        "refused_sessions": sup.refused_sessions,
        "plugins": rows,
    }
    if isinstance(source, SensorHub):
        summary["sensors"] = {
            "emitted": dict(source.emitted),
            "dropped": dict(source.dropped),
            "restarts": dict(source.restarts),
        }
    print(
        f"\n{sup.accepted} events in {elapsed:.2f}s ({sup.accepted / elapsed:,.0f}/s), "
        f"{bad_lines} bad lines skipped, {sup.sink.written} findings"
    )
    print(render_table(rows))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2))


async def _record(args: argparse.Namespace) -> int:
    try:
        hub = _hub(args, [str(args.output.resolve())])
    except ValueError as exc:
        log.error("bad source", error=str(exc))
        return EXIT_USAGE
    hostname = socket.gethostname()
    signals = _Signals()
    signals.stop_after(args.duration)
    started = time.monotonic()
    count = 0
    with args.output.open("w", encoding="utf-8") as out:

        async def write(event: Event) -> None:
            nonlocal count
            if not event.host:
                event.host = hostname
            out.write(message_to_json(event) + "\n")
            count += 1

        await _run_source(hub, write, signals)
    print(f"recorded {count} events in {time.monotonic() - started:.1f}s to {args.output}")
    return EXIT_OK


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
        if args.command == "plugin":
            try:
                folder = scaffold.new_plugin(args.name, args.dir)
            except ValueError as exc:
                print(f"agent-host: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(scaffold.next_steps(folder))
            return EXIT_OK
        if args.command == "record":
            return asyncio.run(_record(args))
        return asyncio.run(_host(args))
    except AgentHostError as exc:
        print(f"agent-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_ABORTED


if __name__ == "__main__":
    sys.exit(main())
