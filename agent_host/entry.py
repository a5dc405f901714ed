"""The ``agent-host`` command's first instructions: note early signals (``early.py``), then
import the command line and run it."""

from __future__ import annotations

from agent_host import early


def main() -> int:
    """The ``agent-host`` command."""
    early.catch()
    from agent_host.cli import main as command

    return command()
