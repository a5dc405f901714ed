"""A plugin's folder is read by the host as root, so it is untrusted input: a link out of it,
a special file or oversized content is refused, naming the file, and never handed to the
plugin's worker (which would read, as the host, what it could not read itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_host.errors import ContentError
from agent_host.host.updates import content
from agent_host.host.updates.content import measure, snapshot
from tests.helpers import agent_host, exec_event, make_plugin, recording, use_plugin

HONEST = "from agent_host.sdk import Plugin\nclass Detector(Plugin): pass\n"


def plugin_with(tmp_path: Path, name: str, make: object) -> Path:
    folder = make_plugin(tmp_path / "plugins", "leaky", HONEST)
    make(folder / name)  # type: ignore[operator]
    return folder


@pytest.mark.parametrize(
    "target",
    ["/etc/shadow", "/proc/self/environ", "secret"],
    ids=["shadow", "the host's environment", "a 0600 file of root's"],
)
def test_a_link_out_of_the_folder_is_refused(tmp_path: Path, target: str) -> None:
    if target == "secret":
        secret = tmp_path / "secret"
        secret.write_text("root's alone")
        secret.chmod(0o600)
        target = str(secret)
    folder = plugin_with(tmp_path, "rules.yar", lambda p: p.symlink_to(target))
    with pytest.raises(ContentError) as refused:
        snapshot(folder, tmp_path / "copies")
    assert str(refused.value) == (
        f"{folder / 'rules.yar'}: a symbolic link out of the plugin folder "
        f"(to {os.path.realpath(target)})"
    )
    assert not [p for p in (tmp_path / "copies").rglob("*") if p.is_file()]  # nothing copied
    assert measure(folder).startswith("refused: ")


def test_a_fifo_or_a_link_to_a_folder_is_refused(tmp_path: Path) -> None:
    folder = plugin_with(tmp_path, "pipe", os.mkfifo)
    with pytest.raises(ContentError, match="not a regular file"):  # and no read blocks on it
        snapshot(folder, tmp_path / "copies")
    (folder / "pipe").unlink()
    (folder / "etc").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(ContentError, match="a symbolic link to a folder"):
        snapshot(folder, tmp_path / "copies")


def test_content_over_its_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content, "MAX_FILE_BYTES", 1000)
    folder = plugin_with(tmp_path, "big.bin", lambda p: p.write_bytes(b"x" * 1001))
    with pytest.raises(ContentError, match="over its size cap"):
        snapshot(folder, tmp_path / "copies")


def test_a_link_inside_the_folder_is_read_through(tmp_path: Path) -> None:
    folder = plugin_with(tmp_path, "alias.py", lambda p: p.symlink_to("detector.py"))
    copied = snapshot(folder, tmp_path / "copies").copy
    assert (copied / "alias.py").read_text() == HONEST
    assert not (copied / "alias.py").is_symlink()


def test_the_host_runs_the_others_and_names_the_file(tmp_path: Path) -> None:
    plugin_with(tmp_path, "rules.yar", lambda p: p.symlink_to("/etc/shadow"))
    use_plugin(tmp_path / "plugins", "tally")
    recording(tmp_path / "rec.jsonl", [exec_event("/usr/bin/id")])
    run = agent_host(["replay", "rec.jsonl", "--plugins", "plugins"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    (refused,) = run.logs_with("plugin refused: its content cannot be taken")
    assert refused["plugin"] == "leaky" and "rules.yar: a symbolic link out" in refused["error"]
    assert run.plugin("tally")["processed"] == 1
