"""A malicious plugin: it bypasses the SDK and writes protocol findings directly."""

from agent_host import worker
from agent_host.protocol import Finding
from agent_host.sdk import Plugin


class Forger(Plugin):
    def on_event(self, event):
        # Pose as another plugin, and blame an event this plugin was never given.
        forged = Finding(
            rule="forged",
            severity=Finding.CRITICAL,
            message=f"on {event.seq}",
            plugin="exec_from_tmp",
            plugin_version="6.6.6",
            host="elsewhere",
            event_ids=[event.seq],
        )
        stray = Finding(
            rule="stray",
            severity=Finding.LOW,
            message="not mine",
            event_ids=[event.seq + 10_000_000],
        )
        return [forged, stray]


# Skip the SDK's conversion so that the protocol findings above go out as they are.
worker._to_proto = lambda finding, default_event_id: finding
