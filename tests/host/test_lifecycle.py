"""The worker lifecycle, driven through its transition table without a single process."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_host.host import lifecycle as lc
from agent_host.host.lifecycle import Blame, Lifecycle, Phase
from agent_host.host.restart import RestartPolicy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"
#: No jitter, so delays are exact; a breaker of 3 in 60 s; short quarantines.
POLICY = RestartPolicy(
    backoff_s=0.1, jitter=0.0, burst=3, window_s=60.0, quarantine_periods_s=(10.0, 20.0, 40.0)
)
HANG = lc.Verdict("hang", "batch of 4 events not done within the 5s deadline")
MEMORY = lc.Verdict("memory", "memory 300 MiB > limit 256 MiB")


def running(policy: RestartPolicy = POLICY, **kwargs: object) -> Lifecycle:
    """A lifecycle whose first worker is running."""
    life = Lifecycle(policy, **kwargs)  # type: ignore[arg-type]
    assert life.begin() == [lc.Spawn(1)]
    life.handle(lc.Spawned(1, pid=100), 0.0)
    life.handle(lc.Ready(1), 0.0)
    assert life.phase is Phase.RUNNING
    return life


def crash(life: Lifecycle, now: float, blame: Blame = Blame.PLUGIN, **kw: object) -> list[object]:
    """The current worker exits with a segfault; if a restart follows, the next one runs."""
    actions: list[object] = list(
        life.handle(lc.Exited(life.generation, -11, blame, **kw), now)  # type: ignore[arg-type]
    )
    if life.phase is Phase.BACKING_OFF:
        actions += life.handle(lc.BackoffElapsed(life.generation), now)
        life.handle(lc.Spawned(life.generation, pid=100 + life.generation), now)
        life.handle(lc.Ready(life.generation), now)
    return actions


def example(kind: type[lc.Input], generation: int) -> lc.Input:
    """One input of each kind, for the table's rows."""
    values: dict[type[lc.Input], lc.Input] = {
        lc.Spawned: lc.Spawned(generation, 1),
        lc.SpawnFailed: lc.SpawnFailed(generation, "fork: Resource temporarily unavailable"),
        lc.Ready: lc.Ready(generation),
        lc.LoadFailed: lc.LoadFailed(generation, "ImportError: no module named yara"),
        lc.Exited: lc.Exited(generation, 1),
        lc.DeadlineExceeded: lc.DeadlineExceeded(generation, HANG),
        lc.HeartbeatLost: lc.HeartbeatLost(generation, HANG),
        lc.LimitExceeded: lc.LimitExceeded(generation, MEMORY),
        lc.ProtocolViolated: lc.ProtocolViolated(generation, lc.Verdict("protocol", "x")),
        lc.StopRequested: lc.StopRequested(generation),
        lc.BackoffElapsed: lc.BackoffElapsed(generation),
        lc.ProbationPassed: lc.ProbationPassed(generation),
        lc.RestartRequested: lc.RestartRequested(generation),
    }
    return values[kind]


class TestTable:
    """Every row of the table is what the code does, and nothing outside it is accepted."""

    @pytest.mark.parametrize(
        ("phase", "kind"), list(lc.TRANSITIONS), ids=lambda v: getattr(v, "__name__", str(v))
    )
    def test_each_row_lands_in_an_allowed_phase(self, phase: Phase, kind: type[lc.Input]) -> None:
        life = Lifecycle(POLICY, generation=1, phase=phase)
        life.handle(example(kind, 1), 0.0)
        assert life.phase in lc.TRANSITIONS[(phase, kind)]

    def test_an_input_outside_the_table_is_refused(self) -> None:
        life = Lifecycle(POLICY, generation=1, phase=Phase.BACKING_OFF)
        with pytest.raises(lc.IllegalTransition, match="Ready while backing_off"):
            life.handle(lc.Ready(1), 0.0)

    def test_an_input_about_a_replaced_worker_is_ignored(self) -> None:
        life = running()
        crash(life, 1.0)
        assert life.generation == 2
        assert life.handle(lc.DeadlineExceeded(1, HANG), 2.0) == []
        assert life.phase is Phase.RUNNING

    def test_the_docs_print_the_table(self) -> None:
        assert lc.transition_table() in DOCS.read_text()


class TestFailures:
    """What a death leads to depends on whose fault it was."""

    def test_backoff_grows_then_the_breaker_quarantines(self) -> None:
        life = running()
        first = crash(life, 1.0)
        second = crash(life, 2.0)
        assert first[0] == lc.ScheduleRestart(0.0, "signal")
        assert second[0] == lc.ScheduleRestart(0.1, "signal")
        third = crash(life, 3.0)
        assert life.phase is Phase.QUARANTINED
        assert third == [
            lc.Settle(),
            lc.Quarantine("3 failures within 60s, last: signal SIGSEGV", 1, 10.0),
        ]

    def test_a_crash_pinned_on_an_event_never_counts(self) -> None:
        life = running()
        for t in range(50):
            assert crash(life, float(t), Blame.EVENT)[0] == lc.ScheduleRestart(0.0, "signal")
        assert life.phase is Phase.RUNNING

    def test_failures_that_led_to_a_dead_letter_are_forgiven(self) -> None:
        life = running()
        crash(life, 1.0)  # generation 1: charged to a batch, counted
        crash(life, 2.0)  # generation 2: the same batch, counted; bisection starts
        # Bisection pins the event: the two deaths were its fault.
        crash(life, 3.0, Blame.EVENT, forgive=(1, 2))
        crash(life, 4.0)
        crash(life, 5.0)
        assert life.phase is Phase.RUNNING  # 2 counted failures now, under the breaker of 3

    def test_a_kill_from_outside_backs_off_but_never_quarantines(self) -> None:
        life = running()
        delays = []
        for t in range(10):
            actions = crash(life, float(t), Blame.OUTSIDE)
            restart = actions[0]
            assert isinstance(restart, lc.ScheduleRestart)
            assert restart.cause == "killed"
            delays.append(restart.delay_s)
        assert life.phase is Phase.RUNNING
        assert delays[:3] == [0.0, 0.1, 0.2]
        life.handle(lc.Exited(life.generation, -9, Blame.OUTSIDE), 11.0)
        assert life.reason == "signal SIGKILL from outside the host"

    def test_an_operator_restart_is_at_once_and_never_counted(self) -> None:
        life = running(quarantine_level=1, on_probation=True)  # where one failure quarantines
        for t in range(POLICY.burst * 2):
            (stop,) = life.handle(lc.RestartRequested(life.generation), float(t))
            assert stop == lc.Terminate(lc.Verdict("operator", "restarted by the operator"))
            code = -15  # SIGTERM: what the host sent, not a crash
            actions = life.handle(lc.Exited(life.generation, code, Blame.HOST), float(t))
            assert actions == [lc.ScheduleRestart(0.0, "operator")]
            life.handle(lc.BackoffElapsed(life.generation), float(t))
            life.handle(lc.Spawned(life.generation, pid=200 + t), float(t))
            life.handle(lc.Ready(life.generation), float(t))
        assert life.phase is Phase.RUNNING and life.on_probation

    def test_an_operator_restart_cuts_a_backoff_short(self) -> None:
        life = running()
        crash(life, 1.0, Blame.OUTSIDE)
        life.handle(lc.Exited(life.generation, -9, Blame.OUTSIDE), 2.0)
        assert life.phase is Phase.BACKING_OFF
        generation = life.generation
        assert life.handle(lc.RestartRequested(generation), 2.0) == [lc.Spawn(generation + 1)]

    def test_a_spent_poison_budget_quarantines(self) -> None:
        life = running()
        actions = crash(life, 1.0, Blame.EVENT, poison_budget_spent="12 of 40 events")
        assert life.phase is Phase.QUARANTINED
        assert life.reason == "poison budget spent: 12 of 40 events"
        assert isinstance(actions[-1], lc.Quarantine)

    def test_the_first_verdict_is_the_cause(self) -> None:
        life = running()
        assert life.handle(lc.DeadlineExceeded(1, HANG), 1.0) == [lc.Terminate(HANG)]
        assert life.handle(lc.LimitExceeded(1, MEMORY), 1.1) == []
        actions = life.handle(lc.Exited(1, -15), 1.2)
        assert actions == [lc.ScheduleRestart(0.0, "hang")]
        assert life.reason == HANG.detail

    def test_a_protocol_violation_kills_at_once(self) -> None:
        life = running()
        verdict = lc.Verdict("protocol", "answered batch 9, which it was not given")
        assert life.handle(lc.ProtocolViolated(1, verdict), 1.0) == [lc.Kill(verdict)]

    def test_a_load_failure_is_final(self) -> None:
        life = Lifecycle(POLICY)
        life.begin()
        life.handle(lc.Spawned(1, 5), 0.0)
        assert life.handle(lc.LoadFailed(1, "SyntaxError (at detector.py:2)"), 0.1) == [lc.Settle()]
        assert life.handle(lc.Exited(1, 4), 0.2) == []
        assert (life.phase, life.reason) == (
            Phase.FAILED,
            "failed to load: SyntaxError (at detector.py:2)",
        )

    def test_a_spawn_failure_is_not_the_plugins(self) -> None:
        life = Lifecycle(POLICY)
        life.begin()
        for _ in range(POLICY.start_attempts - 1):
            actions = life.handle(lc.SpawnFailed(life.generation, "fork failed"), 0.0)
            assert isinstance(actions[0], lc.ScheduleRestart)
            life.handle(lc.BackoffElapsed(life.generation), 0.0)
        assert life.phase is Phase.SPAWNING

    def test_a_plugin_that_cannot_start_is_set_aside_and_tried_again_later(self) -> None:
        life = Lifecycle(POLICY)
        life.begin()
        delays = []
        for _ in range(3):
            for _ in range(POLICY.start_attempts):
                actions = life.handle(lc.SpawnFailed(life.generation, "EMFILE"), 0.0)
                if life.phase is not Phase.SET_ASIDE:
                    life.handle(lc.BackoffElapsed(life.generation), 0.0)
                    continue
                assert actions[0] == lc.Settle()
                assert isinstance(actions[1], lc.SetAside)
                delays.append(actions[1].retry_in_s)
                life.handle(lc.BackoffElapsed(life.generation), 0.0)
                break
        assert delays == [POLICY.set_aside_s, 2 * POLICY.set_aside_s, 4 * POLICY.set_aside_s]
        assert life.quarantine_level == 0  # never the plugin's fault

    def test_a_start_clears_the_count_of_failed_starts(self) -> None:
        life = Lifecycle(POLICY)
        life.begin()
        for _ in range(POLICY.start_attempts - 1):
            life.handle(lc.SpawnFailed(life.generation, "EMFILE"), 0.0)
            life.handle(lc.BackoffElapsed(life.generation), 0.0)
        life.handle(lc.Spawned(life.generation, 5), 0.0)
        life.handle(lc.Ready(life.generation), 0.0)
        life.handle(lc.Exited(life.generation, -9, lc.Blame.OUTSIDE), 0.0)
        life.handle(lc.BackoffElapsed(life.generation), 0.0)
        life.handle(lc.SpawnFailed(life.generation, "EMFILE"), 0.0)
        assert life.phase is Phase.BACKING_OFF  # one failed start, not five


class TestProbation:
    """A quarantine ends on probation after growing periods, and lifts after a stable run."""

    def test_periods_grow_and_the_last_repeats(self) -> None:
        life = running()
        retries = []
        for _ in range(3):
            crash(life, 0.0)
        for _ in range(4):
            assert life.phase is Phase.QUARANTINED
            quarantine = life.handle(lc.BackoffElapsed(life.generation), 0.0)
            assert quarantine == [lc.Spawn(life.generation)]
            assert life.on_probation
            life.handle(lc.Spawned(life.generation, 1), 0.0)
            life.handle(lc.Ready(life.generation), 0.0)
            actions = crash(life, 1.0)  # one failure on probation is enough
            retry = actions[-1]
            assert isinstance(retry, lc.Quarantine)
            assert retry.reason == "failed on probation: signal SIGSEGV"
            retries.append((retry.level, retry.retry_in_s))
        assert retries == [(2, 20.0), (3, 40.0), (4, 40.0), (5, 40.0)]

    def test_a_stable_run_on_probation_lifts_the_quarantine(self) -> None:
        life = running(quarantine_level=1, on_probation=True)
        assert life.handle(lc.ProbationPassed(1), 700.0) == [lc.Release()]
        assert not life.on_probation
        assert life.quarantine_level == 0
        assert crash(life, 701.0)[0] == lc.ScheduleRestart(0.0, "signal")  # back to normal

    def test_starting_out_quarantined(self) -> None:
        life = Lifecycle(POLICY, quarantine_level=1)
        actions = life.begin_quarantined("quarantined since an earlier run", 5.0)
        assert life.phase is Phase.QUARANTINED
        assert actions == [lc.Settle(), lc.Quarantine("quarantined since an earlier run", 1, 5.0)]
        assert life.handle(lc.BackoffElapsed(0), 5.0) == [lc.Spawn(1)]
        assert life.on_probation


class TestStopping:
    """A stop drains a running worker, and ends whatever else is going on."""

    def test_a_running_worker_drains_then_stops(self) -> None:
        life = running()
        assert life.handle(lc.StopRequested(1), 1.0) == [lc.Drain()]
        assert life.phase is Phase.DRAINING
        assert life.handle(lc.Exited(1, 0), 1.5) == [lc.Settle()]
        assert life.phase is Phase.STOPPED

    def test_a_worker_that_will_not_stop_is_killed(self) -> None:
        life = running()
        life.handle(lc.StopRequested(1), 1.0)
        late = lc.Verdict("hang", "did not stop in time")
        assert life.handle(lc.DeadlineExceeded(1, late), 6.0) == [lc.Kill(late)]

    def test_a_stop_while_backing_off_cancels_the_restart(self) -> None:
        life = running()
        crash_actions = life.handle(lc.Exited(1, 1), 1.0)
        assert isinstance(crash_actions[0], lc.ScheduleRestart)
        assert life.handle(lc.StopRequested(1), 1.0) == [lc.Settle()]
        assert life.phase is Phase.STOPPED
        assert life.reason == "stopped while backing off after exit code 1"
        assert life.handle(lc.BackoffElapsed(1), 2.0) == []  # the restart that was due
