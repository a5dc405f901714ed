"""A malicious plugin: it bypasses the SDK and writes protocol findings directly."""

from agent_host.protocol import Finding
from agent_host.sdk import Plugin
from agent_host.worker import runtime as worker


class Forger(Plugin):
    def on_event(self, event):
        # Pose as another plugin, with another host name.
        forged = Finding(
            rule="forged",
            severity=Finding.CRITICAL,
            message=f"on {event.seq}",
            plugin="exec_from_tmp",
            plugin_version="6.6.6",
            host="elsewhere",
            event_ids=[event.seq],
        )
        # Blame an event that does not exist (yet) ...
        future = Finding(
            rule="future",
            severity=Finding.LOW,
            message="not mine",
            event_ids=[event.seq + 10_000_000],
        )
        # ... and the event just before, which (in the test) is a file event: it exists, but
        # this plugin subscribes to processes only and was never given it.
        other_kind = Finding(
            rule="other_kind",
            severity=Finding.LOW,
            message="not mine either",
            event_ids=[event.seq - 1],
        )
        found = [forged, future, other_kind]
        if event.seq > 2:
            # A correlation with the process event two back, given in an earlier batch: allowed.
            found.append(
                Finding(
                    rule="earlier",
                    severity=Finding.LOW,
                    message=f"{event.seq}",
                    event_ids=[event.seq - 2, event.seq],
                )
            )
        return found


# Skip the SDK's conversion so that the protocol findings above go out as they are.
worker._to_proto = lambda finding, default_event_id: finding
