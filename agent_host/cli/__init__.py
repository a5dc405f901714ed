"""The ``agent-host`` command line: run, replay, record, plugins, deadletters.

Every user error (a bad flag, a missing or unwritable path, an unknown plugin) is one line on
stderr, ``agent-host: <what>: <why>``, naming the flag or the file, and exit code 2, whatever the
log format; never a traceback. Each command lives in its own module: ``run`` (run, replay,
record), ``admin`` (plugins, deadletters), ``scaffold`` (plugins new).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import shtab

from agent_host import early, logs
from agent_host.cli import (
    admin,
    attestation,
    config_file,
    paths,
    reconfigure,
    run,
    scaffold,
    status,
    systemd,
)
from agent_host.cli.options import RUN_DEFAULTS, RecordOptions, RunOptions
from agent_host.cli.parser import EXIT_USAGE, build_parser, command_parser
from agent_host.errors import AgentHostError, ConfigFileError, UsageError
from agent_host.host.config import SignaturePolicy
from agent_host.host.store import default_state_dir

__all__ = ["main"]


def _plugins(args: argparse.Namespace) -> int:
    """The ``plugins`` commands."""
    command = args.plugins_command or "list"
    if command == "new":
        try:
            folder = scaffold.new_plugin(args.name, args.dir)
        except ValueError as exc:
            raise AgentHostError(str(exc)) from None
        except OSError as exc:
            raise AgentHostError(f"--dir: cannot create {args.dir}: {exc.strerror}") from None
        print(scaffold.next_steps(folder))
        return 0
    if command == "sign":
        return admin.sign_plugin(args.dir, args.key)
    state_dir = args.state_dir or default_state_dir()
    if command == "restart":
        return status.restart(status.socket_path(args.control_socket, state_dir), args.name)
    store = paths.open_state("--state-dir", state_dir)
    if command == "release":
        code = admin.release(store, args.name)
        control = status.socket_path(args.control_socket, state_dir)
        said = status.release_running(control, args.name)
        if said is not None:
            print(f"the running host: {said}")
        return code
    if command == "history":
        return admin.history(store, args.name)
    # `plugins` alone lists, without the list command's own options: their defaults.
    if args.plugins_command == "list":
        trusted, policy = args.trusted_key, SignaturePolicy(args.signatures)
    else:
        trusted, policy = list(RUN_DEFAULTS.trusted_key), RUN_DEFAULTS.signatures
    return admin.list_plugins(paths.plugin_dirs(args.plugins), store, trusted, policy)


def _service(args: argparse.Namespace) -> int:
    """``service unit`` and ``service install``."""
    if args.service_command == "unit":
        print(systemd.unit_text(), end="")
        return 0
    try:
        target = systemd.install_unit(args.dest)
    except OSError as exc:
        raise UsageError("--dest", f"cannot write into {args.dest}: {exc.strerror}") from None
    print(f"wrote {target}; then: systemctl daemon-reload && systemctl enable --now agent-host")
    return 0


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``config check``: every mistake of the file, one a line; 0 if there is none.
    ``config default``: a file of every setting, commented out."""
    if args.config_command == "default":
        print(config_file.commented_default(command_parser(parser, "run")), end="")
        return 0
    path = config_file.chosen(args.config)
    if path is None:
        print(f"no config file: {config_file.DEFAULT_CONFIG} does not exist (--config FILE)")
        return 1
    settings, mistakes = config_file.read(path, command_parser(parser, "run"))
    for mistake in mistakes:
        print(mistake)
    if mistakes:
        return 1
    print(f"{path}: ok ({len(settings)} settings)")
    return 0


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "record":
        logs.configure(args.log_format, args.log_level)
        return asyncio.run(run.record(RecordOptions.from_args(args)))
    if args.command in ("run", "replay"):
        logs.configure(args.log_format, args.log_level)
        return asyncio.run(run.host(_run_options(args, argv)))
    noted = early.release()  # the other commands take no signal of their own
    if noted is not None:
        return 128 + noted
    logs.configure(args.log_format, args.log_level)
    return _admin(args, parser)


def _from_daemon_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What an admin command is not told (the state folder, the control socket, the plugin
    folders), as the daemon's own config file says it: ``agent-host status`` finds the daemon
    the unit runs with ``--state-dir /var/lib/agent-host``, as osqueryctl and falcoctl do.

    Raises:
        ConfigFileError: listing every mistake of the file.
    """
    given = vars(args)  # the Namespace's own fields: filled in place
    path = config_file.chosen(given.get("config"))
    if path is None:
        return
    settings, mistakes = config_file.read(path, command_parser(parser, "run"))
    if mistakes:
        raise ConfigFileError(mistakes)
    for dest in ("state_dir", "control_socket", "plugins"):
        if dest in given and given[dest] is None and dest in settings:
            given[dest] = settings[dest]


def _admin(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The commands that do not run the host."""
    if args.command in ("plugins", "status", "tail", "attest", "deadletters"):
        _from_daemon_config(args, parser)
    if args.command == "config":
        return _config(args, parser)
    if args.command == "completion":
        print(shtab.complete(parser, args.shell), end="")
        return 0
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "service":
        return _service(args)
    if args.command in ("status", "tail"):
        control = status.socket_path(args.control_socket, args.state_dir or default_state_dir())
        if args.command == "tail":
            return status.tail(control)
        return status.status(control, args.json)
    if args.command == "keys":
        return admin.new_keys(args.out)
    if args.command == "attest":
        if args.attest_command == "verify":
            return attestation.verify(args.report, args.host_key, args.verify_nonce, args.expected)
        if not args.nonce:
            raise UsageError("--nonce", "required: the verifier's nonce")
        state_dir = args.state_dir or default_state_dir()
        control = status.socket_path(args.control_socket, state_dir)
        return attestation.report(args, control, state_dir)
    if args.command == "deadletters":
        store = paths.open_state("--state-dir", args.state_dir or default_state_dir())
        return admin.dead_letters(store, args.plugin, args.json, args.export, args.purge)
    raise AssertionError(f"no command {args.command!r}")  # argparse allows only the above


def _run_options(args: argparse.Namespace, argv: list[str] | None) -> RunOptions:
    """``run``'s options from its flags over the config file; ``replay``'s from its flags."""
    if args.command != "run":
        return RunOptions.from_args(args)
    given = sys.argv[1:] if argv is None else argv
    options = reconfigure.first_read(given, config_file.chosen(args.config))
    logs.configure(options.log_format, options.log_level)  # as the config file may say
    return options


def main(argv: list[str] | None = None) -> int:
    """The ``agent-host`` command; returns its exit code."""
    try:
        return _dispatch(argv)
    except AgentHostError as exc:
        print(f"agent-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return run.EXIT_ABORTED


if __name__ == "__main__":
    sys.exit(main())
