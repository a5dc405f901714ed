from agent_host.sdk import Plugin


class Noop(Plugin):
    def on_event(self, event):
        return None
