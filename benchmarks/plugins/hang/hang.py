import time

from agent_host.sdk import Finding, Plugin, Severity


class Hang(Plugin):
    def on_event(self, event):
        if "HANG" in event.process.exe:
            time.sleep(3600)
        return [Finding(rule="echo", severity=Severity.INFO, message="")]
