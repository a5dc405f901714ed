"""A plugin that misbehaves on purpose, in the way its [config] says.

config.fault: what to do; config.when: "poison" (only on events whose exe contains POISON) or
"always". On every other event it reports one finding ("seen"), so a test can tell exactly which
events it processed.
"""

import ctypes
import os
import re
import signal
import sys
import threading
import time

from agent_host.sdk import Finding, Plugin, Severity


def _spin():
    while True:
        pass


def _forge_batch_ids():
    """Answer batches that hold a poison event under an id the host never sent."""
    from agent_host.worker import runtime as worker

    original = worker.Runtime.process

    def process(runtime, batch):
        message = original(runtime, batch)
        if any("POISON" in e.process.exe for e in batch.events):
            message.result.batch_id += 12345
        return message

    worker.Runtime.process = process


class Faulty(Plugin):
    def on_start(self, config):
        self.fault = config["fault"]
        self.always = config.get("when", "poison") == "always"
        if self.fault == "ignore_sigterm":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.fault == "spin_idle":
            threading.Thread(target=_spin, daemon=True).start()
        if self.fault == "forge_batch":
            _forge_batch_ids()
        if self.fault == "close_pipes":
            os.close(1)
            os.close(2)

    def on_event(self, event):
        if self.always or "POISON" in event.process.exe:
            return self.misbehave(event)
        return [Finding(rule="seen", severity=Severity.LOW, message=f"seen {event.seq}")]

    def misbehave(self, event):
        fault = self.fault
        if fault == "segfault":
            ctypes.string_at(0)
        elif fault == "os_exit":
            os._exit(7)
        elif fault == "raise":
            raise ValueError(f"cannot handle event {event.seq}")
        elif fault == "sys_exit":
            sys.exit(9)
        elif fault == "loop":
            while True:
                pass
        elif fault in ("sleep", "ignore_sigterm"):
            time.sleep(3600)
        elif fault == "regex_bomb":
            # Catastrophic backtracking: C code that holds the GIL and does not come back.
            re.match(r"(a+)+$", "a" * 64 + "b")
        elif fault == "deadlock":
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()
        elif fault == "balloon":
            hog = []
            while True:
                hog.append(b"\x01" * (8 << 20))  # written, so it is resident
                time.sleep(0.01)
        elif fault == "fork_bomb":
            for _ in range(100):
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
            time.sleep(3600)
        elif fault == "flood":
            for i in range(20_000):
                print(f"flood line {i} of event {event.seq}")
        elif fault == "oversized_finding":
            return [Finding(rule="big", severity=Severity.LOW, message="x" * (20 << 20))]
        elif fault == "many_findings":
            return [
                Finding(rule="many", severity=Severity.LOW, message=str(i)) for i in range(10_000)
            ]
        return [Finding(rule="seen", severity=Severity.LOW, message=f"seen {event.seq}")]
