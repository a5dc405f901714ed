"""The daemon's config file: every setting of ``agent-host run``, in TOML, flags overriding it.

Each key is a flag's name without its dashes, with underscores (``state_dir``, ``shadow_events``,
``trusted_key``), as Falco's and osquery's files mirror their flags; ``--no-shadow`` is
``shadow = false``. A value is checked exactly as the flag's would be (its type, its choices),
so the file cannot say what the command line could not. Each mistake is named with the file,
the line and the key::

    /etc/agent-host/agent-host.toml:4: shadow_events: must be a positive integer, got 'many'

The default file, ``/etc/agent-host/agent-host.toml``, is read if it exists; one named with
``--config`` must exist.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent_host.cli.options import LOG_DEFAULTS
from agent_host.toml_lines import line_of

DEFAULT_CONFIG: Final = Path("/etc/agent-host/agent-host.toml")
#: Flags that are not settings: the file names itself, and help is not a setting.
_NOT_SETTINGS: Final = frozenset({"config", "help"})


@dataclass(frozen=True, slots=True)
class Mistake:
    path: Path
    line: int
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


def settings_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The settings a command takes: its options, by destination."""
    return {
        action.dest: action
        for action in parser._actions  # argparse keeps them only here
        if action.option_strings and action.dest not in _NOT_SETTINGS
    }


def _convert(action: argparse.Action, value: Any) -> Any:
    """``value`` as the flag of ``action`` would have it; raises ValueError with the reason."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value  # the key is the destination: `shadow = false` for --no-shadow
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]  # one value: a list of one
        return [_one(action, item) for item in items]
    return _one(action, value)


def _one(action: argparse.Action, value: Any) -> Any:
    from_table = getattr(action.type, "from_table", None)
    if isinstance(value, dict) and from_table is not None:  # [[suppress]]: a table per entry
        return from_table(value)
    if isinstance(value, bool | list | dict):
        raise ValueError(f"must be a single value, got {value!r}")
    convert = action.type if callable(action.type) else str
    try:
        result = convert(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ValueError(str(exc) or f"not a valid value: {value!r}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"one of {choices}, got {value!r}")
    return result


def read(path: Path, parser: argparse.ArgumentParser) -> tuple[dict[str, Any], list[Mistake]]:
    """The settings in ``path`` for the command of ``parser``, and every mistake in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Mistake(path, 0, "", f"cannot be read: {exc.strerror}")]
    except UnicodeDecodeError:
        return {}, [Mistake(path, 0, "", "is not UTF-8 text")]
    try:
        table = tomllib.loads(text)
    except RecursionError:
        return {}, [Mistake(path, 0, "", "not TOML: nested too deeply")]
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        line = int(where.group(1)) if where else 0
        reason = str(exc)[: where.start()].strip() if where else str(exc)
        return {}, [Mistake(path, line, "", f"not TOML: {reason}")]
    known = settings_of(parser)
    settings: dict[str, Any] = {}
    mistakes = []
    for key, value in table.items():
        dest = key.replace("-", "_")
        action = known.get(dest)
        if action is None:
            line = line_of(text, key)
            close = difflib.get_close_matches(dest, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            mistakes.append(Mistake(path, line, key, f"not a setting of agent-host run{hint}"))
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            # [[key]] tables: each checked alone, a mistake named at its own table's line
            headers = _header_lines(text, key)
            converted = []
            for index, item in enumerate(value):
                try:
                    converted.extend(_convert(action, [item]))
                except ValueError as exc:
                    line = headers[index] if index < len(headers) else 0
                    mistakes.append(Mistake(path, line, key, str(exc)))
            settings[dest] = converted
            continue
        try:
            settings[dest] = _convert(action, value)
        except ValueError as exc:
            mistakes.append(Mistake(path, line_of(text, key), key, str(exc)))
    return settings, mistakes


def _header_lines(text: str, key: str) -> list[int]:
    """The line of each ``[[key]]`` header, in order."""
    pattern = re.compile(rf"^[ \t]*\[\[[ \t]*{re.escape(key)}[ \t]*\]\]", re.MULTILINE)
    return [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]


def chosen(given: Path | None) -> Path | None:
    """The config file to read: the one given, else the default if there is one."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def commented_default(parser: argparse.ArgumentParser) -> str:
    """A config file with every setting of ``parser``'s command, commented out at its default
    (or, where it has none, a placeholder), each under its help: what a package installs."""
    parts = [
        "# agent-host's config file: every setting of `agent-host run`, by its flag's name",
        "# (underscores for dashes); a flag on the command line wins over it. Uncomment what you",
        "# change; `agent-host config check` names each mistake with its line.",
    ]
    for dest, action in settings_of(parser).items():
        if action.help in (None, argparse.SUPPRESS):
            continue
        default = action.default
        if default is argparse.SUPPRESS:  # the log's options: their default is the command's
            default = LOG_DEFAULTS.get(dest)
        helped = str(action.help).replace("%(default)s", str(default))
        parts.append("")
        parts += textwrap.wrap(helped, 96, initial_indent="# ", subsequent_indent="# ")
        parts.append(f"# {dest} = {_toml_value(action, default)}")
    return "\n".join(parts) + "\n"


def _toml_value(action: argparse.Action, value: Any) -> str:
    """``value`` as TOML; a placeholder where there is no default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return json.dumps([str(v) for v in value])
    if value is None:
        placeholder = str(action.metavar or action.dest.upper())
        many = isinstance(action, argparse._AppendAction)
        return json.dumps([placeholder] if many else placeholder)
    return json.dumps(str(value))
