import os

from agent_host.sdk import Plugin


class CrashLoop(Plugin):
    def on_event(self, event):
        os._exit(1)
