"""Backoff bounds, jitter, breaker transitions and polling, on a fake clock."""

from __future__ import annotations

import random
import threading
import time

import pytest
from fakes import FakeClock

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    PollTimeout,
    RetryPolicy,
    poll_until,
    watch,
)


class TestRetryPolicy:
    def test_cap_grows_exponentially_then_saturates(self):
        p = RetryPolicy(base_delay=0.5, max_delay=4.0, multiplier=2.0)
        assert [p.backoff_cap(r) for r in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    def test_huge_retry_numbers_do_not_overflow(self):
        assert RetryPolicy(max_delay=3.0).backoff_cap(10_000) == 3.0

    @pytest.mark.parametrize("retry", [1, 2, 3, 8])
    def test_full_jitter_stays_within_zero_and_cap(self, retry):
        p = RetryPolicy(base_delay=1.0, max_delay=5.0)
        rng = random.Random(retry)
        draws = [p.backoff(retry, rng) for _n in range(2000)]
        assert min(draws) >= 0.0
        assert max(draws) <= p.backoff_cap(retry)

    def test_full_jitter_spreads_over_the_range(self):
        # Full jitter means uniform on [0, cap]: both halves of the range are used, and the mean is near cap/2.
        p = RetryPolicy(base_delay=1.0, max_delay=8.0)
        rng = random.Random(1)
        draws = [p.backoff(4, rng) for _n in range(4000)]
        assert any(d < 1.0 for d in draws) and any(d > 7.0 for d in draws)
        assert 3.6 < sum(draws) / len(draws) < 4.4

    @pytest.mark.parametrize("kwargs", [
        {"max_attempts": 0}, {"base_delay": -1}, {"multiplier": 0.5}, {"deadline": 0},
    ])
    def test_rejects_nonsense(self, kwargs):
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)


def trial_taken(clock) -> CircuitBreaker:
    """A breaker opened by one failure, cooled down, with its half-open trial just let through."""
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    b.record_failure()
    clock.t += 5
    assert b.allow()
    return b


class TestCircuitBreaker:
    def test_closed_until_threshold_consecutive_failures(self, clock):
        b = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock)
        b.record_failure()
        b.record_failure()
        assert b.state == CLOSED and b.allow()
        b.record_failure()
        assert b.state == OPEN
        assert not b.allow()

    def test_success_resets_the_failure_count(self, clock):
        b = CircuitBreaker(failure_threshold=2, clock=clock)
        b.record_failure()
        b.record_success()
        b.record_failure()
        assert b.state == CLOSED

    def test_open_becomes_half_open_after_cool_down(self, clock):
        b = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=clock)
        b.record_failure()
        clock.t += 9.9
        assert b.state == OPEN
        assert b.retry_in() == pytest.approx(0.1)
        clock.t += 0.1
        assert b.state == HALF_OPEN
        assert b.retry_in() == 0.0

    def test_half_open_lets_one_trial_through(self, clock):
        b = trial_taken(clock)
        assert not b.allow(), "a second call while the trial is in flight must be refused"

    def test_half_open_success_closes(self, clock):
        b = trial_taken(clock)
        b.record_success()
        assert b.state == CLOSED
        assert b.consecutive_failures == 0
        assert b.allow() and b.allow()

    def test_half_open_failure_reopens_with_fresh_cool_down(self, clock):
        b = CircuitBreaker(failure_threshold=3, reset_timeout=5, clock=clock)
        for _n in range(3):
            b.record_failure()
        clock.t += 5
        assert b.allow()
        b.record_failure()  # one failure in half-open state is enough
        assert b.state == OPEN
        assert b.retry_in() == pytest.approx(5)

    def test_describe_names_state_and_wait(self, clock):
        b = CircuitBreaker(failure_threshold=1, reset_timeout=4, clock=clock)
        assert b.describe() == "closed (0 consecutive failures)"
        b.record_failure()
        clock.t += 1
        assert b.describe() == "open (1 consecutive failures, trial in 3.0 s)"

    def test_rejects_zero_threshold(self):
        with pytest.raises(ValueError):
            CircuitBreaker(failure_threshold=0)

    def test_a_trial_released_without_a_verdict_frees_the_slot(self, clock):
        """A half-open trial that ends with neither success nor failure (a 429: busy, not broken; an exception
        the client does not classify) gives the slot back, so the next call is the next trial."""
        b = trial_taken(clock)
        b.release()
        assert b.state == HALF_OPEN
        assert b.allow(), "the endpoint stayed blocked after a trial that ended without a verdict"

    def test_concurrent_callers_get_one_trial(self):
        """allow() is atomic: when many threads find the cool-down over at once, exactly one trial goes through.
        The clock yields to other threads on every read, which is where an unlocked check-then-set loses."""

        class YieldingClock(FakeClock):
            def now(self):
                time.sleep(0.001)
                return self.t

        slow = YieldingClock()
        b = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=slow)
        b.record_failure()
        slow.t += 5
        start = threading.Barrier(16)
        allowed = []

        def caller():
            start.wait()
            allowed.append(b.allow())

        threads = [threading.Thread(target=caller) for _n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert allowed.count(True) == 1, allowed


class TestWatch:
    def test_reports_the_look_that_held_and_how_it_got_there(self, clock):
        values = iter([1, 2, 3, 4])
        seen = watch(lambda: next(values), lambda v: v >= 3, timeout=10, interval=1, clock=clock)
        assert (seen.last, seen.held, seen.checks, seen.waited, seen.gave_up) == (3, True, 3, 2, False)

    def test_a_wait_that_runs_out_returns_the_last_look_and_gives_up(self, clock):
        seen = watch(lambda: "down", lambda v: v == "up", timeout=5, interval=2, clock=clock)
        assert (seen.last, seen.held, seen.checks, seen.gave_up) == ("down", False, 3, True)

    def test_no_wait_asked_is_not_giving_up(self, clock):
        seen = watch(lambda: "down", lambda v: v == "up", timeout=0, interval=2, clock=clock)
        assert (seen.checks, seen.held, seen.gave_up) == (1, False, False)

    def test_stamped_puts_the_counts_on_the_observation(self, clock):
        class Look:
            checks = 0
            waited = 0.0
            gave_up = False

        look = watch(Look, lambda v: False, timeout=3, interval=1, clock=clock).stamped()
        assert (look.checks, look.waited, look.gave_up) == (4, 3, True)


class TestPollUntil:
    def test_returns_first_observation_that_holds(self, clock):
        values = iter([1, 2, 3, 4])
        value, waited = poll_until(lambda: next(values), lambda v: v >= 3, timeout=10, interval=1,
                                   what="value reaches 3", clock=clock)
        assert value == 3
        assert waited == 2
        assert clock.sleeps == [1, 1]

    def test_times_out_with_last_observation(self, clock):
        with pytest.raises(PollTimeout) as info:
            poll_until(lambda: {"leader": None}, lambda v: v["leader"] is not None, timeout=5, interval=2,
                       what="a leader is elected", clock=clock)
        err = info.value
        assert err.last == {"leader": None}
        assert err.polls == 3
        assert "a leader is elected did not happen within 5.0 s (3 checks)" in str(err)
        assert "'leader': None" in str(err)
        assert clock.now() - 1000.0 <= 5

    def test_checks_at_least_once_even_with_no_time(self, clock):
        value, waited = poll_until(lambda: "up", lambda v: v == "up", timeout=0, interval=1, what="x", clock=clock)
        assert (value, waited) == ("up", 0)
