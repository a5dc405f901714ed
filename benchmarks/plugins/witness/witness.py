"""Counts what the live benchmark's generators did, as the host delivered it."""

from agent_host.sdk import Finding, Plugin, ProcessAction, Severity


class Witness(Plugin):
    def on_start(self, config):
        self.exe = config["exe"]
        self.folder = config["folder"]
        self.starts = 0
        self.paths = set()

    def on_event(self, event):
        kind = event.WhichOneof("kind")
        if kind == "process":
            if event.process.action == ProcessAction.START and event.process.exe == self.exe:
                self.starts += 1
        elif kind == "file" and not event.file.is_dir and event.file.path.startswith(self.folder):
            self.paths.add(event.file.path)

    def on_stop(self):
        yield Finding(
            rule="witness",
            severity=Severity.INFO,
            message="what the generators did, as seen",
            attributes={"starts": str(self.starts), "files": str(len(self.paths))},
        )
