"""Holds its first batch while four processes spin: what a plugin burning cores looks like."""

import os

from agent_host.sdk import Plugin


class Burner(Plugin):
    def on_event(self, event: object) -> None:
        os.fork()
        os.fork()
        while True:
            pass
