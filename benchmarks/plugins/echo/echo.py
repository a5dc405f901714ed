from agent_host.sdk import Finding, Plugin, Severity


class Echo(Plugin):
    def on_event(self, event):
        return [Finding(rule="echo", severity=Severity.INFO, message="")]
