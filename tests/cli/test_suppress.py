"""Suppressions from the config file and the flags: matching findings are not written, and
each one is counted; the allowlist keeps package managers' ordinary work out; a mistake in a
``[[suppress]]`` table is named with its line."""

from __future__ import annotations

from pathlib import Path

from agent_host.host.suppress import Suppression, Suppressions
from agent_host.protocol import Event, FileEvent, Finding
from agent_host.testing import exec_event
from tests.cli.test_errors import cli
from tests.helpers import agent_host, recording

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "agent_host" / "plugins"


def file_write(path: str, exe: str) -> Event:
    return Event(file=FileEvent(action=FileEvent.CREATED, path=path, exe=exe, pid=7))


def events() -> list[Event]:
    return [
        exec_event("/opt/tools/useradd", "-m", "ci-runner", user="builder"),  # suppressed: user
        exec_event("/opt/tools/useradd", "-m", "mallory", user="mallory"),  # kept
        file_write("/etc/cron.d/backup", "/usr/bin/dpkg"),  # the allowlist
        file_write("/etc/cron.d/evil", "/usr/bin/python3"),  # kept
        file_write("/etc/systemd/system/lab.service", "/usr/bin/cp"),  # suppressed: path
        exec_event("/usr/bin/chmod", "u+s", "/tmp/x"),  # suppressed: the flag
    ]


def test_suppressions_drop_and_count(tmp_path: Path) -> None:
    recording(tmp_path / "r.jsonl", events())
    (tmp_path / "agent-host.toml").write_text(
        f'plugins = ["{BUNDLED}"]\n'
        "[[suppress]]\n"
        'user = "builder"\n'
        'reason = "the CI user makes its own accounts"\n'
        "[[suppress]]\n"
        'plugin = "sigma"\n'
        'path = "/etc/systemd/system/lab.*"\n'
    )
    run = agent_host(
        ["run", "--source", "replay:r.jsonl", "--config", "agent-host.toml", "--sandbox", "warn"],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert sigma_about(run.findings) == {
        "/opt/tools/useradd -m mallory",
        "/etc/cron.d/evil",
        "/usr/bin/chmod u+s /tmp/x",
    }
    assert run.summary is not None
    (row,) = [r for r in run.summary["plugins"] if r["plugin"] == "sigma"]
    assert row["suppressed_findings"] == 3  # the user, the path, dpkg's cron file

    # A flag replaces the file's list (as every repeatable setting does); without the
    # allowlist, dpkg's cron file is reported too.
    run = agent_host(
        [
            *("run", "--source", "replay:r.jsonl", "--config", "agent-host.toml"),
            *("--suppress", "rule=*,process=/usr/bin/chmod", "--no-allowlist", "--sandbox", "warn"),
        ],
        tmp_path,
    )
    assert sigma_about(run.findings) == {
        "/opt/tools/useradd -m ci-runner",
        "/opt/tools/useradd -m mallory",
        "/etc/cron.d/backup",
        "/etc/cron.d/evil",
        "/etc/systemd/system/lab.service",
    }


def sigma_about(findings: list[Finding]) -> set[str]:
    return {
        f.attributes.get("TargetFilename") or f.attributes["CommandLine"]
        for f in findings
        if f.plugin == "sigma"
    }


def test_a_bad_suppression_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[suppress]]\nrule = "x"\n\n[[suppress]]\nowner = "x"\n')
    checked = cli(["config", "check", "--config", "bad.toml"], tmp_path)
    assert checked.returncode == 1
    assert checked.stdout.strip() == (
        "bad.toml:4: suppress: unknown key 'owner'; known: plugin, rule, process, path, user,"
        " reason"
    )
    flag = cli(["run", "--source", "synthetic", "--suppress", "reason=why"], tmp_path)
    assert flag.returncode == 2 and "names nothing to match" in flag.stderr
    assert "Traceback" not in flag.stderr + checked.stdout


def finding(exe: str, path: str = "", title: str = "New Cron File Created") -> Finding:
    attributes = {"Image": exe, "title": title}
    if path:
        attributes["TargetFilename"] = path
    return Finding(plugin="sigma", rule="6c4e2f43", message=title, attributes=attributes)


def test_the_allowlist_covers_only_where_packages_install() -> None:
    allowlist = Suppressions(allowlist=True)
    assert allowlist.suppressed(finding("/usr/bin/dpkg", "/etc/cron.daily/man-db"))
    assert allowlist.suppressed(finding("/usr/bin/apt-get", "/usr/lib/x86_64-linux-gnu/libz.so"))
    assert allowlist.suppressed(finding("/usr/sbin/ldconfig.real", "/etc/ld.so.cache"))
    kept = [
        finding("/usr/bin/dpkg", "/tmp/payload"),  # nowhere a package installs
        finding("/usr/bin/dpkg", "/root/.ssh/authorized_keys"),
        finding("/usr/bin/dpkg", "/etc/sudoers.d/90-backdoor"),
        finding("/usr/bin/apt-get"),  # about a process: the package manager itself
        finding("/usr/bin/python3", "/etc/cron.d/evil"),  # not a package manager
        # A rule about the package manager itself.
        finding("/usr/bin/dpkg", "/usr/bin/x", title="Binary Replaced by Dpkg"),
        finding("/usr/bin/yum", "/usr/lib/x", title="Suspicious Package Files"),
    ]
    assert [f for f in kept if allowlist.suppressed(f)] == []
    assert sum(allowlist.hits.values()) == 3


def test_several_globs_joined_by_a_bar_match_any() -> None:
    entry = Suppression.parse("process=/usr/bin/pip*|/usr/bin/npm,reason=builds")
    assert entry.matches(finding("/usr/bin/pip3", "/tmp/x"))
    assert entry.matches(finding("/usr/bin/npm", "/tmp/x"))
    assert not entry.matches(finding("/usr/bin/npx", "/tmp/x"))
