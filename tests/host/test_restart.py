"""The restart policy: backoff with jitter, reset after stable running, a crash-loop breaker."""

from __future__ import annotations

import pytest

from agent_host.host.restart import RestartPolicy, RestartTracker


class TestRestartTracker:
    """Delays grow exponentially within the jitter, reset when stable, and stop at the burst."""

    def test_backoff_doubles_within_jitter(self) -> None:
        tracker = RestartTracker(RestartPolicy(backoff_s=0.1, jitter=0.2, burst=100))
        delays = [tracker.record_failure(float(i), None) for i in range(6)]
        assert delays[0] == 0.0
        for n, delay in enumerate(delays[1:]):
            nominal = 0.1 * 2**n
            assert delay is not None
            assert nominal * 0.8 <= delay <= nominal * 1.2

    def test_backoff_is_capped(self) -> None:
        tracker = RestartTracker(
            RestartPolicy(backoff_s=1, max_backoff_s=5, jitter=0, burst=100, window_s=1)
        )
        delays = [tracker.record_failure(float(i * 10), None) for i in range(8)]
        assert delays[-1] == 5

    def test_stable_run_resets_backoff(self) -> None:
        tracker = RestartTracker(RestartPolicy(stable_after_s=30, jitter=0, burst=100))
        tracker.record_failure(0.0, None)
        assert tracker.record_failure(1.0, 0.5) == pytest.approx(0.1)
        assert tracker.record_failure(100.0, 60.0) == 0.0  # ran 40 s: stable

    def test_burst_within_window_quarantines(self) -> None:
        tracker = RestartTracker(RestartPolicy(burst=3, window_s=10))
        assert tracker.record_failure(0.0, None) is not None
        assert tracker.record_failure(1.0, None) is not None
        assert tracker.record_failure(2.0, None) is None

    def test_failures_outside_window_are_forgotten(self) -> None:
        tracker = RestartTracker(RestartPolicy(burst=3, window_s=10))
        for t in (0.0, 20.0, 40.0, 60.0):
            assert tracker.record_failure(t, None) is not None
