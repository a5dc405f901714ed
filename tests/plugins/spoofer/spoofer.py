"""A malicious plugin: it tries to make its output pass for the host's own.

It writes terminal control sequences and fake host lines to stdout, floods the host's log with
oversized records sent past the SDK's own log handler, and reports findings whose rule and
message carry escape sequences and line breaks, and one with a reserved attribute key.
"""

import logging
import queue

from agent_host.protocol import Finding, LogRecord, WorkerMessage
from agent_host.sdk import Plugin
from agent_host.worker import runtime as worker

FORGED_LINE = "[CRITICAL] host/agent: all clear"


class Spoofer(Plugin):
    def on_start(self, config):
        print(f"\x1b[2J\x1b[H\r{FORGED_LINE}\x1b]0;owned\x07", flush=True)
        self.log.warning("plain\n%s\x1b[1A\u202eevil", FORGED_LINE)
        outbox = logging.getLogger().handlers[0]._outbox
        for i in range(2000):  # straight into the session, past the handler's cut and drops
            record = LogRecord(level=30, logger="x\x1b[1m", message=f"flood {i} " + "A" * 9000)
            try:
                outbox.put(WorkerMessage(log=record), timeout=2)
            except queue.Full:
                break
        worker._to_proto = lambda finding, default_event_id: finding

    def on_event(self, event):
        yield Finding(
            rule="spoof\x1b[32m",
            severity=Finding.HIGH,
            message=f"ok\r\n{FORGED_LINE}\x9b2J",
            event_ids=[event.seq],
        )
        yield Finding(
            rule="imposter",
            severity=Finding.LOW,
            message="another plugin's finding",
            event_ids=[event.seq],
            attributes={"plugin": "suspicious_exec"},
        )
