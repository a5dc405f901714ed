from agent_host.sdk import Finding, Plugin, Severity


class Emit(Plugin):
    def on_start(self, config):
        self.per_event = int(config["per_event"])

    def on_event(self, event):
        return [
            Finding(rule=f"emit{i}", severity=Severity.INFO, message="")
            for i in range(self.per_event)
        ]
