"""The worker's identity: a uid and gid of its own, and no capability in any set.

Done as root, in this order, because each step needs what the next one takes away: the bounding
set can only be emptied while CAP_SETPCAP is held, and the securebits are locked before the uid
changes, so that nothing the plugin runs can regain root's capabilities (not even by exec'ing a
setuid-root program: no_new_privs is set too, in ``confine``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from agent_host.worker.sandbox import kernel

# From <linux/securebits.h>: root has no special powers, locked; a uid change from root drops
# the capabilities (the kernel's default fix-up), locked; no keeping capabilities across it,
# locked; no raising ambient capabilities, locked.
_SECUREBITS: Final = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80

_CAP_FIELDS: Final = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63


def become(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` with no supplementary groups and no capabilities; raises OSError."""
    for cap in range(_last_capability() + 1):
        kernel.prctl(kernel.PR_CAPBSET_DROP, cap, what="PR_CAPBSET_DROP")
    kernel.prctl(kernel.PR_SET_SECUREBITS, _SECUREBITS, what="PR_SET_SECUREBITS")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    kernel.clear_capabilities()
    kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT")


def capability_sets() -> dict[str, int]:
    """This process's capability sets, as the kernel reports them."""
    sets = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in _CAP_FIELDS:
            sets[name] = int(value, 16)
    return sets
