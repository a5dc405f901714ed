"""Reports, at on_stop, exactly which events it was given: count, distinct, duplicates, kinds."""

from agent_host.sdk import Finding, Plugin, Severity


class Tally(Plugin):
    def on_start(self, config):
        self.seen = set()
        self.events = 0
        self.duplicates = 0
        self.kinds = set()
        self.log.info("tally starting")

    def on_event(self, event):
        self.events += 1
        if event.seq in self.seen:
            self.duplicates += 1
        self.seen.add(event.seq)
        self.kinds.add(event.WhichOneof("kind"))

    def on_stop(self):
        yield Finding(
            rule="tally",
            severity=Severity.INFO,
            message="events seen",
            event_ids=(max(self.seen),) if self.seen else (),
            attributes={
                "events": str(self.events),
                "distinct": str(len(self.seen)),
                "duplicates": str(self.duplicates),
                "seq_sum": str(sum(self.seen)),
                "kinds": ",".join(sorted(self.kinds)),
            },
        )
