"""Fault injection: one bad plugin, or one bad input, never takes down the host, blinds the other
plugins, or loses an event.

Each test runs the real host (the agent-host command) with a healthy plugin (tally) beside a
faulty one, and checks that the host stayed up, that the healthy plugin saw every event exactly
once, and that the faulty plugin's accounting is exact: every event it was owed is processed,
dead-lettered or (once it is quarantined) undelivered.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent_host.protocol import Event
from tests.helpers import TEST_PLUGINS, HostRun, agent_host, exec_event, recording, use_plugin

HANG_LIMITS = "batch_deadline_s = 0.5"


def faulty_plugin(
    root: Path, fault: str, *, when: str = "poison", limits: str = "", module: str = "faulty"
) -> None:
    folder = root / "faulty"
    folder.mkdir(parents=True)
    for name in ("faulty.py", "import_error.py"):
        shutil.copy(TEST_PLUGINS / "faulty" / name, folder / name)  # a link out: refused
    (folder / "plugin.toml").write_text(
        textwrap.dedent(f"""\
        [plugin]
        name = "faulty"
        version = "6.6"
        entrypoint = "{module}:Faulty"
        subscribe = ["process"]
        [limits]
        {limits}
        [config]
        fault = "{fault}"
        when = "{when}"
        """)
    )


def poisoned(n: int, poison: set[int]) -> list[Event]:
    """n process events; those at the 1-based positions in ``poison`` carry the POISON marker."""
    return [
        exec_event(f"/opt/POISON{i}" if i in poison else f"/usr/bin/p{i}", pid=i)
        for i in range(1, n + 1)
    ]


@dataclass
class FaultRun:
    run: HostRun
    n: int
    dead_letters: list[dict[str, Any]]

    @property
    def faulty(self) -> dict[str, Any]:
        return self.run.plugin("faulty")

    def seen_by_faulty(self) -> list[int]:
        return sorted(
            f.event_ids[0] for f in self.run.findings if f.plugin == "faulty" and f.rule == "seen"
        )

    def assert_contained(self) -> None:
        """The host survived, the healthy plugin is complete, the accounting is exact."""
        run = self.run
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        tally = next(f for f in run.findings if f.plugin == "tally")
        assert tally.attributes["events"] == tally.attributes["distinct"] == str(self.n)
        assert tally.attributes["seq_sum"] == str(self.n * (self.n + 1) // 2)
        assert run.plugin("tally")["restarts"] == {}
        row = self.faulty
        assert row["processed"] + row["dead_lettered"] + row["undelivered"] == self.n
        assert "dropped" not in row  # an owed event is processed, set aside or undelivered
        assert len(self.dead_letters) == row["dead_lettered"]


def run_fault(
    tmp_path: Path,
    fault: str,
    *,
    n: int = 200,
    poison: frozenset[int] = frozenset({57}),
    when: str = "poison",
    limits: str = "",
    batch: int = 16,
    module: str = "faulty",
    log_level: str = "info",
) -> FaultRun:
    plugins = tmp_path / "plugins"
    use_plugin(plugins, "tally")
    faulty_plugin(plugins, fault, when=when, limits=limits, module=module)
    recording(tmp_path / "rec.jsonl", poisoned(n, set(poison)))
    # A long flush interval makes every batch exactly `batch` events, so the number of
    # failures needed to isolate a poison event is exact.
    run = agent_host(
        [
            "replay",
            "rec.jsonl",
            "--plugins",
            str(plugins),
            "--quiet",
            "--batch-size",
            str(batch),
            "--flush-ms",
            "60000",
        ],
        cwd=tmp_path,
        log_level=log_level,
    )
    letters = agent_host(["deadletters", "--json"], cwd=tmp_path)
    dead = [json.loads(line) for line in letters.stdout.splitlines()]
    return FaultRun(run, n, dead)


def assert_isolated(
    fr: FaultRun, poison: int, cause: str, failure: str | re.Pattern[str], failures: int
) -> None:
    """Exactly ``poison`` was dead-lettered for ``failure``; every other event was processed."""
    fr.assert_contained()
    assert [d["seq"] for d in fr.dead_letters] == [poison]
    letter = fr.dead_letters[0]
    assert (letter["plugin"], letter["version"]) == ("faulty", "6.6")
    assert letter["event"]["process"]["exe"] == f"/opt/POISON{poison}"
    if isinstance(failure, str):
        assert letter["failure"] == failure
    else:
        assert failure.fullmatch(letter["failure"]), letter["failure"]
    assert fr.seen_by_faulty() == [i for i in range(1, fr.n + 1) if i != poison]
    assert fr.faulty["processed"] == fr.n - 1
    assert fr.faulty["state"] == "stopped"
    # One more now and then: a worker can die with a finished batch's result unsent, twice, and
    # that innocent batch is then bisected first (cleanly, at no cost) before the guilty one.
    assert fr.faulty["restarts"] in ({cause: failures}, {cause: failures + 1})


# Batches of 16 events: the batch fails twice, then 16 -> 8 -> 4 -> 2 -> 1 fails four times more.
CRASHES = [
    ("segfault", "signal", "signal SIGSEGV"),
    ("os_exit", "exit", "exit code 7"),
    ("sys_exit", "exit", "exit code 9"),
    # A finding over the message size limit: the worker's own gRPC refuses to send it.
    ("oversized_finding", "exit", "exit code 5"),
    # A malformed answer: a result for a batch the host never sent. The host kills the worker.
    (
        "forge_batch",
        "protocol",
        re.compile(
            r"protocol violation: answered batch \d+, which it "
            r"was not given or not given next"
        ),
    ),
]


class TestCrashes:
    """A plugin that dies on one event: that event is dead-lettered, all others processed."""

    @pytest.mark.parametrize(("fault", "cause", "failure"), CRASHES, ids=[c[0] for c in CRASHES])
    def test_crash_on_one_event(
        self, tmp_path: Path, fault: str, cause: str, failure: str | re.Pattern[str]
    ) -> None:
        fr = run_fault(tmp_path, fault)
        assert_isolated(fr, 57, cause, failure, failures=6)
        died = fr.run.logs_with("worker died")
        # 6, or 7 when an innocent batch was bisected first (see assert_isolated): every death
        # logged is one restart counted.
        assert len(died) == sum(fr.faulty["restarts"].values())
        pattern = failure if isinstance(failure, re.Pattern) else re.compile(re.escape(failure))
        assert all(pattern.fullmatch(d["cause"]) for d in died), died

    def test_exception_in_on_event_is_counted_not_fatal(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "raise", poison=frozenset({57, 58, 190}))
        fr.assert_contained()
        assert fr.dead_letters == []
        assert (fr.faulty["processed"], fr.faulty["errors"], fr.faulty["restarts"]) == (200, 3, {})
        assert fr.seen_by_faulty() == [i for i in range(1, 201) if i not in (57, 58, 190)]
        raised = [e for e in fr.run.logs if e["event"].startswith("on_event raised")]
        source = (TEST_PLUGINS / "faulty" / "faulty.py").read_text().splitlines()
        line = next(n for n, text in enumerate(source, 1) if "raise ValueError" in text)
        assert raised[0]["event"] == (
            f"on_event raised on event 57: ValueError: cannot handle event 57 (at faulty.py:{line})"
        )
        assert raised[0]["plugin"] == "faulty"

    def test_at_debug_each_distinct_error_comes_with_its_traceback_once(
        self, tmp_path: Path
    ) -> None:
        fr = run_fault(tmp_path, "raise", poison=frozenset({57, 58, 190}), log_level="debug")
        assert fr.faulty["errors"] == 3
        raised = [e for e in fr.run.logs if e["event"].startswith("on_event raised")]
        shown = [e["event"] for e in fr.run.logs if e["event"].startswith("on_event traceback")]
        assert len(raised) == 2 and len(shown) == 1  # two batches, one error: one traceback
        line = next(
            n
            for n, text in enumerate(
                (TEST_PLUGINS / "faulty" / "faulty.py").read_text().split("\n"), 1
            )
            if "raise ValueError" in text
        )
        assert shown[0].startswith("on_event traceback: Traceback (most recent call last): | ")
        assert f'faulty.py", line {line}, in misbehave' in shown[0]
        assert shown[0].endswith("ValueError: cannot handle event 57")

    def test_exception_at_import(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "segfault", module="import_error")
        fr.assert_contained()
        assert fr.faulty["state"] == "failed"
        assert fr.faulty["reason"] == (
            "failed to load: ImportError: this plugin's dependency is "
            "missing (at import_error.py:1)"
        )
        assert (fr.faulty["processed"], fr.faulty["undelivered"]) == (0, 200)

    @pytest.mark.slow  # 8 s: run after the test command by .ci/run
    def test_one_poison_event_among_ten_thousand(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "segfault", n=10_000, poison=frozenset({4321}), batch=256)
        # 256 -> 128 -> ... -> 1: eight splits after the two failures of the whole batch.
        assert_isolated(fr, 4321, "signal", "signal SIGSEGV", failures=10)

        # After a fix, the dead letter can be replayed as a recording.
        exported = agent_host(["deadletters", "--export", "poison.jsonl"], cwd=tmp_path)
        assert exported.returncode == 0
        lines = (tmp_path / "poison.jsonl").read_text().splitlines()
        assert len(lines) == 1
        assert '"exe": "/opt/POISON4321"' in lines[0]
        replayed = agent_host(
            ["replay", "poison.jsonl", "--plugins", "plugins", "--quiet"], cwd=tmp_path
        )
        assert replayed.plugin("tally")["processed"] == 1

    @pytest.mark.slow  # 13 s: run after the test command by .ci/run
    def test_crash_on_every_event_quarantines(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "segfault", when="always")
        fr.assert_contained()
        row = fr.faulty
        assert row["state"] == "quarantined"
        # Crashes pinned on single events do not trip the crash-loop breaker; the poison budget
        # (at least 10 dead letters, more than 10% of what it settled) does.
        assert row["reason"] == "poison budget spent: 10 of 10 events dead-lettered (100% > 10%)"
        assert row["processed"] == 0
        assert [d["seq"] for d in fr.dead_letters] == list(range(1, 11))
        assert row["undelivered"] == 190

        # The quarantine outlives the host: the next run does not start the plugin ...
        again = agent_host(["replay", "rec.jsonl", "--plugins", "plugins", "--quiet"], cwd=tmp_path)
        assert again.returncode == 0
        assert again.plugin("faulty")["state"] == "quarantined"
        assert again.plugin("faulty")["reason"].startswith("quarantined since an earlier run")
        assert again.plugin("faulty")["delivered"] == 0
        assert again.plugin("faulty")["undelivered"] == 200
        assert again.plugin("tally")["processed"] == 200
        listing = agent_host(["plugins", "--plugins", "plugins"], cwd=tmp_path)
        assert "quarantined since" in listing.stdout
        # ... until an operator lifts it.
        assert "next try on probation" in listing.stdout
        released = agent_host(["plugins", "release", "faulty"], cwd=tmp_path)
        assert released.returncode == 0
        third = agent_host(["replay", "rec.jsonl", "--plugins", "plugins", "--quiet"], cwd=tmp_path)
        assert third.plugin("faulty")["state"] == "quarantined"
        assert third.plugin("faulty")["dead_lettered"] == 10
        # A new version starts clean, without an operator.
        toml = tmp_path / "plugins" / "faulty" / "plugin.toml"
        toml.write_text(toml.read_text().replace('version = "6.6"', 'version = "6.7"'))
        fourth = agent_host(
            ["replay", "rec.jsonl", "--plugins", "plugins", "--quiet"], cwd=tmp_path
        )
        assert fourth.plugin("faulty")["reason"].startswith("poison budget spent")
        assert fourth.plugin("faulty")["dead_lettered"] == 10


class TestPoisonCannotSwitchDetectionOff:
    """Crashes pinned on single events are the events' fault: they do not quarantine."""

    @pytest.mark.slow  # 18 s: twenty bisections; .ci/run runs it after the test command
    def test_twenty_poison_events_in_ten_thousand(self, tmp_path: Path) -> None:
        poison = frozenset(range(250, 10_001, 500))
        fr = run_fault(tmp_path, "segfault", n=10_000, poison=poison)
        fr.assert_contained()
        row = fr.faulty
        assert (row["state"], row["reason"]) == ("stopped", "")
        assert sorted(d["seq"] for d in fr.dead_letters) == sorted(poison)
        assert (row["processed"], row["dead_lettered"]) == (9_980, 20)
        assert fr.seen_by_faulty() == sorted(set(range(1, 10_001)) - poison)
        assert len(fr.seen_by_faulty()) == 9_980
        # Each poison event cost two deaths that counted until it was pinned (then forgiven),
        # and four to bisect its batch of 16; now and then a batch in flight beside it is
        # charged twice first and bisected clean, which costs one more.
        assert 20 * (2 + 4) <= row["restarts"]["signal"] < 20 * (2 + 4) + 20


# Batches of 4 events, a 0.5 s deadline: the batch hangs twice, then 4 -> 2 -> 1 twice more.
HANGS = ["loop", "sleep", "deadlock", "regex_bomb", "ignore_sigterm"]


class TestHangs:
    """A plugin stuck in Python, in a blocking call or in a deadlock is killed at its deadline."""

    @pytest.mark.parametrize("fault", HANGS)
    def test_hang_on_one_event(self, tmp_path: Path, fault: str) -> None:
        fr = run_fault(tmp_path, fault, n=40, poison=frozenset({17}), batch=4, limits=HANG_LIMITS)
        assert_isolated(
            fr, 17, "hang", "batch of 1 events not done within the 0.5s deadline", failures=4
        )
        stops = fr.run.logs_with("stopping worker")
        assert [s["reason"] for s in stops] == [
            "batch of 4 events not done within the 0.5s deadline",
            "batch of 4 events not done within the 0.5s deadline",
            "batch of 2 events not done within the 0.5s deadline",
            "batch of 1 events not done within the 0.5s deadline",
        ]
        ignored = fr.run.logs_with("worker ignored SIGTERM; killing it")
        assert len(ignored) == (4 if fault == "ignore_sigterm" else 0)


class TestResources:
    """Limits from plugin.toml are enforced with a verdict that names the limit and the value."""

    def test_memory_balloon(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "balloon", limits="memory_mb = 200")
        assert_isolated(fr, 57, "memory", re.compile(r"memory \d+ MiB > limit 200 MiB"), failures=6)

    def test_bounded_fork_bomb(self, tmp_path: Path) -> None:
        fr = run_fault(
            tmp_path,
            "fork_bomb",
            limits=f"processes = 16\n{HANG_LIMITS}",
            batch=4,
            n=40,
            poison=frozenset({17}),
        )
        fr.assert_contained()
        assert [d["seq"] for d in fr.dead_letters] == [17]
        reasons = [s["reason"] for s in fr.run.logs_with("stopping worker")]
        assert len(reasons) == 4
        assert all(re.fullmatch(r"processes \d+ > limit 16", r) for r in reasons), reasons
        # Every child the plugin forked died with its worker.
        leftovers = [
            p
            for p in psutil.process_iter(["cwd"])
            if (p.info["cwd"] or "").startswith(str(tmp_path))
        ]
        assert leftovers == []

    def test_cpu_spin_while_idle(self, tmp_path: Path) -> None:
        plugins = tmp_path / "plugins"
        use_plugin(plugins, "tally")
        faulty_plugin(plugins, "spin_idle", limits="cpu_percent = 30\ncpu_window_s = 1")
        run = agent_host(
            [
                "run",
                "--source",
                "synthetic",
                "--rate",
                "20",
                "--duration",
                "4",
                "--plugins",
                str(plugins),
                "--quiet",
            ],
            cwd=tmp_path,
        )
        assert run.returncode == 0
        row = run.plugin("faulty")
        assert row["restarts"].get("cpu", 0) + (row["state"] == "quarantined") >= 1
        reasons = [s["reason"] for s in run.logs_with("stopping worker")]
        assert reasons
        assert all(re.fullmatch(r"cpu \d+% while idle > limit 30% over 1s", r) for r in reasons)
        tally = run.plugin("tally")
        assert tally["restarts"] == {}
        assert tally["processed"] == tally["delivered"] > 0


class TestMisbehaviour:
    """Floods, closed pipes and findings the plugin has no right to make are contained."""

    def test_stdout_flood(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "flood", poison=frozenset({10, 20, 30}))
        fr.assert_contained()
        assert fr.faulty["processed"] == 200
        assert fr.faulty["restarts"] == {}
        output = [e for e in fr.run.logs_with("plugin output") if e["plugin"] == "faulty"]
        suppressed = sum(e["lines"] for e in fr.run.logs_with("plugin output suppressed"))
        assert len(output) + suppressed == 60_000
        assert len(output) < 60_000

    def test_closed_pipes(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "close_pipes", poison=frozenset())
        fr.assert_contained()
        assert fr.faulty["processed"] == 200
        assert fr.faulty["restarts"] == {}

    def test_too_many_findings_for_one_event(self, tmp_path: Path) -> None:
        fr = run_fault(tmp_path, "many_findings", poison=frozenset({57}))
        fr.assert_contained()
        assert fr.faulty["processed"] == 200
        assert fr.faulty["rejected_findings"] == 10_000
        # Only that event's findings are rejected; its batch neighbours keep theirs.
        assert fr.seen_by_faulty() == [i for i in range(1, 201) if i != 57]
        warning = fr.run.logs_with("findings rejected: too many for one event")[0]
        assert (warning["events"], warning["most"], warning["limit"]) == ([57], 10_000, 100)
