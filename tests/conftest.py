"""Fixtures every test folder may use."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator

import pytest


@pytest.fixture
def audit_lock() -> Iterator[None]:
    """The kernel's audit stream has one reader per machine (the syscall sensor), and the DNS
    tests one port 53: a test that needs either holds this lock, so that two test runs at once
    (how flakes are shaken out) take turns instead of stealing each other's events."""
    with open("/tmp/agent-host-tests-audit.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
