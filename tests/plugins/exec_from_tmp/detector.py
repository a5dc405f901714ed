import sys

from agent_host.sdk import Finding, Plugin, Severity


class ExecFromTmp(Plugin):
    def on_start(self, config):
        print("exec_from_tmp says hello on stdout")
        print("exec_from_tmp says hello on stderr", file=sys.stderr)

    def on_event(self, event):
        if event.process.exe.startswith("/tmp/"):
            self.log.warning("caught %s", event.process.exe)
            return [
                Finding(
                    rule="exec_tmp",
                    severity=Severity.HIGH,
                    message=f"exec {event.process.exe}",
                    techniques=("T1036",),
                )
            ]
        return None
