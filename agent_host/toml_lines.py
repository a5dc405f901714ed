"""Where a key stands in a TOML file's text, so that a mistake is named with its line.

``tomllib`` gives values, not where they came from: the config file's and the manifests'
checks look the key up in the text they parsed.
"""

from __future__ import annotations

import re


def line_of(text: str, key: str) -> int:
    """The line of ``key`` in ``text``: ``name`` (a key or a table's header), or
    ``table.name`` (looked for after the table's header); 0 if it is not found."""
    table, _, name = key.rpartition(".")
    start = 0
    if table:
        header = re.search(rf"(?m)^[ \t]*\[[ \t]*{re.escape(table)}[ \t]*\]", text)
        if header is None:
            return 0
        start = header.end()
    found = re.compile(
        rf"(?m)^[ \t]*(\[[ \t]*{re.escape(name)}[ \t]*\]|[\"']?{re.escape(name)}[\"']?[ \t]*=)"
    ).search(text, start)
    return text.count("\n", 0, found.start()) + 1 if found else 0
