"""When to restart a failed worker, when to stop trying, and when to try again.

Exponential backoff with jitter between restarts, reset after a period of stable running; and a
crash-loop breaker in the manner of Erlang/OTP's restart intensity and systemd's StartLimitBurst:
``burst`` failures within ``window_s`` quarantine the plugin. A quarantine is not forever: as
osquery denylists a query for a while, the plugin is retried on probation after growing periods
and the quarantine is lifted once it has run ``probation_s`` without failing.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How eagerly a failed worker is restarted."""

    #: The first restart after a stable run is immediate; the next waits this long, then doubles.
    backoff_s: float = 0.1
    max_backoff_s: float = 30.0
    #: Each delay is scaled by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.2
    #: A worker that has run this long without failing starts its backoff afresh.
    stable_after_s: float = 30.0
    #: This many failures within window_s quarantine the plugin.
    burst: int = 5
    window_s: float = 60.0
    #: How long each successive quarantine lasts before a retry on probation; the last repeats.
    quarantine_periods_s: tuple[float, ...] = (600.0, 3600.0, 86400.0)
    #: A plugin on probation that runs this long without failing is released.
    probation_s: float = 600.0
    #: A plugin whose worker cannot be started (no process could be had: out of file
    #: descriptors, processes, memory) this many times in a row is set aside: it is owed no
    #: events (they are counted undelivered) and is tried again after set_aside_s, doubling
    #: up to max_set_aside_s. Not the plugin's fault, so never a quarantine.
    start_attempts: int = 5
    set_aside_s: float = 30.0
    max_set_aside_s: float = 600.0


@dataclass(slots=True)
class RestartTracker:
    """The failure history of one plugin under a RestartPolicy."""

    policy: RestartPolicy
    _failures: deque[float] = field(default_factory=deque)
    _consecutive: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def record_failure(self, now: float, running_since: float | None) -> float | None:
        """Note a failure at ``now``; return the delay before the next start, or None to quarantine.

        ``running_since`` is when the failed worker became ready (None if it never did).
        """
        policy = self.policy
        if running_since is not None and now - running_since >= policy.stable_after_s:
            self._consecutive = 0
        self._failures.append(now)
        while self._failures and now - self._failures[0] > policy.window_s:
            self._failures.popleft()
        if len(self._failures) >= policy.burst:
            return None
        return self._next_delay()

    def forgive(self, at: float) -> None:
        """Take back the failure recorded at ``at``: it turned out to be an event's fault."""
        try:
            self._failures.remove(at)
        except ValueError:
            return  # already out of the window
        self._consecutive = max(0, self._consecutive - 1)

    def record_uncounted(self, now: float, running_since: float | None) -> float:
        """Note a failure the plugin did not cause: it backs off, but never toward quarantine.

        Backing off still matters: a plugin that could pass its own crashes off as someone
        else's must not get an immediate restart loop out of it.
        """
        if running_since is not None and now - running_since >= self.policy.stable_after_s:
            self._consecutive = 0
        return self._next_delay()

    def _next_delay(self) -> float:
        policy = self.policy
        self._consecutive += 1
        if self._consecutive == 1:
            return 0.0
        delay: float = min(policy.max_backoff_s, policy.backoff_s * 2.0 ** (self._consecutive - 2))
        return delay * self._rng.uniform(1 - policy.jitter, 1 + policy.jitter)
