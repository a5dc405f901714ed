"""What the agent writes (findings, the export's spool, its state) is for its own user alone,
whatever the umask: findings carry command lines, paths and user names."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_host.host.exports.spool import Spool
from agent_host.host.findings import JsonLinesSink
from agent_host.host.store import DB_NAME, StateStore


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask an operator could run with."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_nothing_written_is_readable_by_others(tmp_path: Path, open_umask: None) -> None:
    JsonLinesSink(tmp_path / "findings.jsonl", None).close()
    (tmp_path / "spool-dir").mkdir()
    Spool(tmp_path / "spool-dir", 1024).close()
    StateStore(tmp_path / "state").close()
    assert mode(tmp_path / "findings.jsonl") == 0o600
    assert mode(tmp_path / "spool-dir" / "export.spool") == 0o600
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / DB_NAME) == 0o600


def test_a_findings_file_left_readable_is_closed_to_others(tmp_path: Path) -> None:
    old = tmp_path / "findings.jsonl"
    old.write_text("")
    old.chmod(0o644)  # by an earlier version, or by hand
    JsonLinesSink(old, None).close()
    assert mode(old) == 0o600
