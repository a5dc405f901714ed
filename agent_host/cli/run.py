"""``agent-host run``, ``replay`` and ``record``: the host (or the sensors alone) over a source.

SIGINT or SIGTERM stop the host after every accepted event has been delivered and its findings
written; a second signal stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent_host import early, logs
from agent_host.cli import metrics, paths, progress, reconfigure, resume, status
from agent_host.cli.options import LiveOptions, RecordOptions, RunOptions
from agent_host.cli.summary import report, status_line, summary_of
from agent_host.cli.systemd import Notifier
from agent_host.cli.watch import FolderWatch
from agent_host.errors import UsageError
from agent_host.host.control import ControlServer, ControlService
from agent_host.host.exports.nats import NatsExport
from agent_host.host.exports.program import ProgramOutput
from agent_host.host.exports.sender import SpooledOutput
from agent_host.host.exports.syslog import SyslogOutput
from agent_host.host.exports.webhook import Webhook
from agent_host.host.findings import JsonLinesSink
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import discover
from agent_host.host.store import default_state_dir
from agent_host.host.supervisor import Supervisor
from agent_host.protocol import Event
from agent_host.sources.live import SensorHub, build_hub
from agent_host.sources.live.file_changes import DEFAULT_PATHS
from agent_host.sources.recording import RecordingWriter
from agent_host.sources.replay import ReplaySource
from agent_host.sources.synthetic import SyntheticSource

log = structlog.get_logger("agent_host")

EXIT_OK = 0
EXIT_NOTHING_RAN = 1
EXIT_ABORTED = 130
#: How long each output may take at the end to send what is spooled (the rest waits on disk).
_OUTPUT_DRAIN_S = 5.0
#: A task of the host's own failed (the log says which): the host stopped.
EXIT_HOST_FAILED = 3
#: Findings were accepted but could not be written (a full disk): the summary says how many.
EXIT_FINDINGS_LOST = 4
#: How long a stop waits for the source's last event to be taken.
_FEED_STOP_S = 1.0
#: What a Unix socket path may hold (sun_path, less its terminating NUL).
_MAX_SOCKET_PATH = 107


def _hub(options: LiveOptions, exclude: list[str]) -> SensorHub:
    """The live sensors, never watching the agent's own files (that way lies a feedback loop)."""
    # This host's runtime folder (worker sockets) only: a glob on every agent-host-* folder
    # would be a place for anyone to hide files from the sensor.
    own = [f"{tempfile.gettempdir()}/agent-host-{os.getpid()}-*", *exclude]
    return build_hub(
        options.sensor_names,
        watch=list(options.watch or DEFAULT_PATHS),
        exclude=[*options.exclude, *own],
        poll_interval_s=options.poll_interval,
        capacity=options.queue_size,
        policy=options.overflow,
    )


def _open_source(options: RunOptions, exclude: list[str]) -> AsyncIterable[Event]:
    """The event source the command asks for.

    Raises:
        UsageError: naming the recording or the flag.
    """
    if options.command == "replay":
        spec, what = f"replay:{options.recording}", str(options.recording)
    else:
        spec, what = options.source, "--source"
    try:
        if spec == "live":
            return _hub(options, exclude)
    except ValueError as exc:
        raise UsageError("--sensors", str(exc)) from None
    if spec == "synthetic":
        return SyntheticSource(rate=options.rate)
    if spec.startswith("replay:"):
        path = Path(spec.removeprefix("replay:"))
        if not path.is_file():
            raise UsageError(what, "recording not found")
        skip = resume.resume_point(state_dir_for(options), path) if options.resume else 0
        return ReplaySource(path, skip)
    raise UsageError(what, f"unknown source {spec!r}; known: live, synthetic, replay:FILE")


@dataclass(slots=True)
class _Outputs:
    """Where findings went besides the file, once the host has started them."""

    #: Every output with a spool: the NATS export, the webhook, syslog, the program.
    spooled: list[SpooledOutput] = field(default_factory=list)


class _Signals:
    """SIGINT/SIGTERM: the first asks for a graceful stop, a second for an immediate one.
    SIGHUP (when the host runs): reload the plugins and reopen the findings file."""

    def __init__(self, *, reload: bool = False) -> None:
        self.stopping = asyncio.Event()
        self.aborting = asyncio.Event()
        self.reloading = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._handle)
        if reload:
            loop.add_signal_handler(signal.SIGHUP, self.reloading.set)
        for signum in early.take():  # those that came before this loop could take them
            if signum == signal.SIGHUP:
                self.reloading.set()  # without a reload to do (record), nothing
            else:
                self._handle()

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
    # The source ends between two events; but an event can wait for room in a full backlog
    # (a plugin far behind): then the stop does not wait for it. Taking an event is
    # cancel-safe: it is owed to all its plugins or to none.
    _, late = await asyncio.wait({feeding}, timeout=_FEED_STOP_S)
    if late:
        log.warning("a backlog is full: stopping without waiting for room", limit_s=_FEED_STOP_S)
        feeding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeding


async def _reload_on_hup(
    sup: Supervisor,
    options: RunOptions,
    plugins_dir: list[Path],
    sink: JsonLinesSink,
    signals: _Signals,
) -> None:
    """On each SIGHUP, or change of the plugins folder (``watch.py``): the config file read
    again (``reconfigure.py`` says which settings apply at once), the plugin set as the folders
    have it now, and the findings file reopened (after logrotate moved it away)."""
    while True:
        await signals.reloading.wait()
        signals.reloading.clear()
        log.info("reloading the config, the plugins and the findings file")
        try:
            options = _reconfigured(sup, options)
            _reopen(sink, options.findings)
            plugins_dir = paths.plugin_dirs(options.plugins)
            discovery = discover(plugins_dir)
            for error in discovery.errors:
                log.error("plugin skipped: bad manifest", error=str(error))
            await sup.reload(discovery.manifests)
        except UsageError as exc:
            log.error("reload stopped; the running plugins stay", error=str(exc))
        except Exception:  # a reload that fails leaves the running plugins as they were
            log.exception("reload failed; the running plugins stay")


def _reconfigured(sup: Supervisor, options: RunOptions) -> RunOptions:
    """The settings after the config file was read again, the live ones applied."""
    reread = reconfigure.reread(options)
    if reread is None or not reread.applied:
        return options
    new = reread.options
    if "log_level" in reread.applied:
        logs.configure(new.log_format, new.log_level)
    if reread.applied - {"plugins", "findings", "log_level"}:
        sup.reconfigure(new.host_config(sup.config.state_dir))  # a bad key: nothing changes
    return new


def _reopen(sink: JsonLinesSink, findings: Path | None) -> None:
    try:
        sink.reopen(findings)
    except OSError as exc:
        log.error(
            "findings file could not be reopened; writing on to the open one",
            path=str(findings),
            error=exc.strerror or str(exc),
        )


def state_dir_for(options: RunOptions) -> Path:
    """The state folder: as given; by default the daemon's, or for ``replay`` one of its own, so
    that replaying a poison recording on a workstation cannot quarantine the daemon's plugin."""
    if options.state_dir is not None:
        return Path(options.state_dir)
    default = default_state_dir()
    return default / "replay" if options.command == "replay" else default


async def host(options: RunOptions) -> int:
    """``agent-host run`` and ``replay``: the host over a source, then the summary."""
    notifier = Notifier()  # first: no worker may inherit systemd's socket
    plugins_dir = paths.plugin_dirs(options.plugins)
    state_dir = state_dir_for(options)
    own_files = [str(p) for p in (options.findings, state_dir) if p is not None]
    source = _open_source(options, [*own_files, f"{state_dir}/*"])
    if options.summary_json is not None:
        paths.writable_file("--summary-json", options.summary_json)
    given_socket = options.control_socket
    if given_socket is not None:  # asked for by name: unusable is an error, not a log line
        paths.writable_file("--control-socket", given_socket)
        if len(os.fsencode(given_socket)) > _MAX_SOCKET_PATH:
            raise UsageError("--control-socket", f"longer than {_MAX_SOCKET_PATH} bytes")
    config = options.host_config(state_dir)
    paths.open_state("--state-dir", state_dir).close()
    discovery = discover(plugins_dir)
    for error in discovery.errors:
        log.error("plugin skipped: bad manifest", error=str(error))
    if not discovery.manifests:
        log.error("no usable plugin", path=" ".join(map(str, plugins_dir)))
        return EXIT_NOTHING_RAN

    sink = JsonLinesSink(
        paths.appendable("--findings", options.findings),
        terminal=None if options.quiet else sys.stdout,
        max_bytes=options.findings_max_mb * 2**20,
        keep=options.findings_keep,
    )
    sup = Supervisor(config, discovery.manifests, sink)
    signals = _Signals(reload=True)
    outputs = _Outputs()
    started = time.monotonic()
    try:
        code = await _serve(
            sup,
            options,
            source=source,
            plugins_dir=plugins_dir,
            sink=sink,
            signals=signals,
            notifier=notifier,
            outputs=outputs,
        )
    finally:
        sink.close()
        notifier.close()
    if code == EXIT_NOTHING_RAN:
        return code
    report(options, sup, source, time.monotonic() - started, outputs.spooled)
    undelivered = sum(output.spool.dropped + output.refused for output in outputs.spooled)
    if (sup.findings.lost or undelivered) and code == EXIT_OK:
        return EXIT_FINDINGS_LOST
    return code


async def _serve(
    sup: Supervisor,
    options: RunOptions,
    *,
    source: AsyncIterable[Event],
    plugins_dir: list[Path],
    sink: JsonLinesSink,
    signals: _Signals,
    notifier: Notifier,
    outputs: _Outputs,
) -> int:
    """Start the host, feed it until the source ends or a stop is asked, and stop it."""
    await sup.start()
    if not any(r.phase is Phase.RUNNING for r in sup.plugins.values()):
        log.error("no plugin could start")
        await sup.stop()
        return EXIT_NOTHING_RAN
    _start_outputs(sup, options, outputs)
    port = options.metrics_port
    if port:
        hub = source if isinstance(source, SensorHub) else None
        try:
            metrics.serve(sup, hub, outputs.spooled, options.metrics_address, port)
        except OSError as exc:
            await sup.stop()
            raise UsageError("--metrics-port", f"cannot listen on {port}: {exc.strerror}") from None
    control = await _serve_control(sup, options, source)
    started = time.monotonic()
    notifier.ready(status_line(sup))  # every plugin has started or been set aside
    signals.stop_after(options.duration)
    tasks = [
        asyncio.ensure_future(_reload_on_hup(sup, options, plugins_dir, sink, signals)),
        asyncio.ensure_future(notifier.keep_alive(lambda: status_line(sup))),
    ]
    if options.watch_plugins and options.command == "run":
        watch = FolderWatch(plugins_dir, signals.reloading)
        watch.start()
        tasks.append(asyncio.ensure_future(watch.run()))
    tasks.append(asyncio.ensure_future(_stop_on_failure(sup, signals)))
    if isinstance(source, ReplaySource) and progress.wanted(sys.stderr, options.log_format):
        tasks.append(asyncio.ensure_future(progress.Progress(source, sup, sys.stderr).keep()))
    checkpoints = keeping = None
    if options.command == "replay" and isinstance(source, ReplaySource):
        checkpoints = resume.Checkpoints(state_dir_for(options), source, sup)
        keeping = asyncio.ensure_future(checkpoints.keep())  # through the drain too
    await _run_source(source, checkpoints.take if checkpoints else sup.publish, signals)
    notifier.stopping(f"draining; {status_line(sup)}")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    code = await _stop(sup, signals)
    if checkpoints is not None and keeping is not None:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        checkpoints.end(complete=not signals.stopping.is_set())
    if control is not None:
        await control.stop()
    if outputs.spooled:
        summary = summary_of(sup, source, time.monotonic() - started)
        for output in outputs.spooled:
            output.summary(summary, sup.findings.run_id)
        await asyncio.gather(*(output.close(_OUTPUT_DRAIN_S) for output in outputs.spooled))
    if sup.failure:
        log.error("the host stopped because of its own fault", failure=sup.failure)
        return EXIT_HOST_FAILED
    return code


async def _stop(sup: Supervisor, signals: _Signals) -> int:
    """Stop the host (bounded), or at once on a second signal; the exit code so far."""
    finish = asyncio.ensure_future(sup.stop())
    aborting = asyncio.ensure_future(signals.aborting.wait())
    await asyncio.wait({finish, aborting}, return_when=asyncio.FIRST_COMPLETED)
    aborting.cancel()
    if finish.done():
        return EXIT_OK
    log.warning("second signal: stopping without draining")
    finish.cancel()
    await sup.abort()
    return EXIT_ABORTED  # and still the summary: what was done, and what was not


async def _stop_on_failure(sup: Supervisor, signals: _Signals) -> None:
    """A host task failed: stop as if asked, and exit non-zero."""
    await sup.failed.wait()
    signals.stopping.set()


def _start_outputs(sup: Supervisor, options: RunOptions, outputs: _Outputs) -> None:
    """The outputs asked for besides the findings file (``--export``, ``--webhook``,
    ``--syslog``, ``--program``), each with its spool in the state folder, started."""
    folder, bound = state_dir_for(options), options.export_spool_mb
    if options.export:
        outputs.spooled.append(NatsExport(options.export, options.export_subject, folder, bound))
    if options.webhook:
        headers = dict(_header(text) for text in options.webhook_header)
        outputs.spooled.append(Webhook(options.webhook, folder, bound, headers))
    if options.syslog:
        outputs.spooled.append(SyslogOutput(options.syslog, folder, bound))
    if options.program:
        outputs.spooled.append(ProgramOutput(options.program, folder, bound))
    for output in outputs.spooled:
        sup.findings.listeners.append(output.findings_written)
        output.start()


def _header(text: str) -> tuple[str, str]:
    name, _, value = text.partition(":")
    return name.strip(), value.strip()


async def _serve_control(
    sup: Supervisor, options: RunOptions, source: AsyncIterable[Event]
) -> ControlServer | None:
    """The control socket (``agent-host status``, ``tail``), for ``run`` only."""
    if options.command != "run":
        return None
    path = status.socket_path(options.control_socket, state_dir_for(options))
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        log.error("control socket not served: its path is too long", path=str(path))
        return None
    dropped = source.dropped if isinstance(source, SensorHub) else None
    server = ControlServer(ControlService(sup, dropped), path)
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:
        log.error("control socket not served", path=str(path), error=str(exc))
        return None
    return server


async def record(options: RecordOptions) -> int:
    """``agent-host record``: live events into a recording, until the duration or a signal."""
    try:
        hub = _hub(options, [str(options.output.resolve())])
    except ValueError as exc:
        raise UsageError("--sensors", str(exc)) from None
    out = paths.open_write("--output", options.output)
    hostname = socket.gethostname()
    signals = _Signals()
    signals.stop_after(options.duration)
    started = time.monotonic()
    count = 0
    failed: OSError | None = None
    try:
        with out:
            writer = RecordingWriter(out, binary=options.format == "binary")

            async def write(event: Event) -> None:
                nonlocal count, failed
                if failed is not None:
                    return
                if not event.host:
                    event.host = hostname
                try:
                    writer.write(event)
                except OSError as exc:  # a full disk, /dev/full: the recording ends here
                    failed = exc
                    signals.stopping.set()
                    return
                count += 1

            await _run_source(hub, write, signals)
    except OSError as exc:  # the last buffered write, at close
        failed = failed or exc
    if failed is not None:
        why = f"cannot write {options.output}: {failed.strerror or failed}"
        raise UsageError("--output", f"{why} (after {count} events)")
    print(f"recorded {count} events in {time.monotonic() - started:.1f}s to {options.output}")
    return EXIT_OK
