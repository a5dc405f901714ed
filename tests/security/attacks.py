"""Malicious plugins, as an attacker would write them (see test_attacks.py).

PROBER tries, on its first event, every way out that fails quietly (reads, writes, connects,
signals, sessions) and reports each attempt as a finding: ``contained:<attempt>`` when the
kernel refused, ``breach:<attempt>`` when it got through. The others do one destructive thing.
"""

PROBER = r"""
import ctypes, glob, os, signal, site, socket
from agent_host.sdk import Finding, Plugin

libc = ctypes.CDLL(None, use_errno=True)


def _raise():
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code))


class Detector(Plugin):
    def on_start(self, config):
        self.c = config
        self.done = False

    def attempt(self, name, action):
        try:
            got = action()
        except OSError as exc:
            return Finding(rule=f"contained:{name}", severity="info", message=exc.strerror or "")
        if got is False:
            return Finding(rule=f"contained:{name}", severity="info", message="nothing found")
        return Finding(rule=f"breach:{name}", severity="critical", message=repr(got)[:500])

    def on_event(self, event):
        if self.done:
            return []
        self.done = True
        c, host = self.c, self.c["host_pid"]
        return [self.attempt(name, action) for name, action in (
            ("signal the host", lambda: os.kill(host, signal.SIGSTOP)),
            ("signal every pid", self.signal_all),
            ("read the host's memory", lambda: open(f"/proc/{host}/mem", "rb").read(1)),
            ("read the host's environment", lambda: open(f"/proc/{host}/environ", "rb").read()),
            ("ptrace the host", lambda: libc.ptrace(16, host, 0, 0) == 0 or _raise()),
            ("process_vm_readv", self.vm_read),
            ("see other processes", lambda: [p for p in os.listdir("/proc") if p.isdigit()
                                             and int(p) > 2] or False),
            ("read a sibling's secret", self.read_stdin_pipes),
            ("open a sibling's session", self.connect_sessions),
            ("rewrite the quarantine table", lambda: self.append(c["state_db"])),
            ("rewrite the findings", lambda: self.append(c["findings"])),
            ("append code to another plugin", lambda: self.append(c["sibling_code"])),
            ("drop a .pth in site-packages", self.drop_pth),
            ("write under /etc", lambda: open("/etc/agent-host-pwned", "w").write("x")),
            ("read /etc/shadow", lambda: open("/etc/shadow").read()),
            ("mount a tmpfs", self.mount),
            ("connect to 127.0.0.1", lambda: socket.create_connection(
                ("127.0.0.1", c["tcp_port"]), timeout=2)),
            ("send a UDP packet", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                .sendto(b"x", ("127.0.0.1", c["udp_port"]))),
            ("open a raw packet socket", lambda: socket.socket(17, socket.SOCK_RAW, 0x0300)),
            ("open a netlink socket", lambda: socket.socket(16, socket.SOCK_RAW, 0)),
            ("execute a program", lambda: os.execv("/bin/sh", ["sh", "-c", "true"])),
            ("load a kernel module", lambda: libc.init_module(None, 0, b"") == 0 or _raise()),
            ("leave the namespaces", lambda: libc.unshare(0x10000000) == 0 or _raise()),
        )]

    def signal_all(self):
        hit = []
        own = {int(tid) for tid in os.listdir("/proc/self/task")}  # its threads are itself
        for pid in range(1, 1 << 16):
            if pid in own:
                continue
            try:
                os.kill(pid, signal.SIGSTOP)
                hit.append(pid)
            except OSError:
                pass
        # pid 1 of its own namespace takes no signal it does not handle: not a breach.
        return [pid for pid in hit if pid != 1] or False

    def vm_read(self):
        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        buf = ctypes.create_string_buffer(8)
        local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
        remote = IoVec(0x400000, 8)
        got = libc.process_vm_readv(self.c["host_pid"], ctypes.byref(local), 1,
                                    ctypes.byref(remote), 1, 0)
        return got >= 0 or _raise()

    def read_stdin_pipes(self):
        found = []
        for fd in glob.glob("/proc/[0-9]*/fd/0"):
            if not fd.startswith((f"/proc/{os.getpid()}/", "/proc/self/")):
                try:
                    found.append(open(fd, "rb").read(32))
                except OSError:
                    pass
        return found or False

    def connect_sessions(self):
        reached = []
        for path in glob.glob(f"/tmp/agent-host-{self.c['host_pid']}-*/*/session.sock"):
            if os.stat(os.path.dirname(path)).st_uid == os.getuid():
                continue  # its own
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                reached.append(path)
            except OSError:
                pass
            finally:
                s.close()
        return reached or False

    def append(self, path):
        with open(path, "ab") as f:
            f.write(b"\nforged by the prober\n")

    def drop_pth(self):
        for folder in site.getsitepackages():
            with open(os.path.join(folder, "agent_host_pwned.pth"), "w") as f:
                f.write("import os\n")

    def mount(self):
        os.makedirs("/tmp/m", exist_ok=True)
        return libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None) == 0 or _raise()
"""

#: SIGKILLs every process it may signal (all but itself), on every event.
KILL_ALL = """\
import os, signal
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        os.kill(-1, signal.SIGKILL)
"""

#: Leaves a daemon behind: setsid and a double fork, then it sleeps forever.
DAEMON = """\
import os, time
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.started = False

    def on_event(self, event):
        if self.started:
            return None
        self.started = True
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                signal_free = os.open("/dev/null", os.O_RDONLY)
                os.dup2(signal_free, 0)
                time.sleep(3600)
            os._exit(0)
        return Finding(rule="daemon started", severity="info", message="")
"""

#: Forks until the kernel says no.
FORK_BOMB = """\
import os, time
from agent_host.sdk import Plugin

class Detector(Plugin):
    def on_event(self, event):
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(3600)
                    os._exit(0)
            except OSError:
                time.sleep(3600)
"""

#: Fills its private /tmp, then writes on: its scratch space is capped, the host's is not touched.
FILL_TMP = """\
import os
from agent_host.sdk import Finding, Plugin

class Detector(Plugin):
    def on_start(self, config):
        self.done = False

    def on_event(self, event):
        if self.done:
            return None
        self.done = True
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while True:
                    f.write(b"x" * (1 << 20))
                    written += 1
        except OSError as exc:
            return Finding(rule="contained:fill /tmp", severity="info", message=f"{written} MiB")
        return Finding(rule="breach:fill /tmp", severity="critical", message="")
"""
