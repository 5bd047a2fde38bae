# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retry with exponential backoff and full jitter, a per-endpoint circuit breaker, and polling with a deadline.

Pure logic: time and randomness come in through a ``Clock`` and a ``random.Random``, so unit tests drive every
path with a fake clock and never sleep. The HTTP client in ``http.py`` is built on these pieces.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Optional, Tuple, TypeVar

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Clock:
    """Monotonic time and sleeping; replaced by a fake in tests."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch: what another machine can compare (deadlines sent in a header)."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``max_attempts`` and ``deadline`` (seconds for the whole operation, waits included) both bound the work;
    whichever is reached first ends it. Delays follow "full jitter": a uniform draw between 0 and
    ``min(max_delay, base_delay * multiplier ** (retry - 1))``.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0
    multiplier: float = 2.0
    deadline: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1, got %r" % (self.max_attempts,))
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1, got %r" % (self.multiplier,))
        if self.deadline <= 0:
            raise ValueError("deadline must be positive, got %r" % (self.deadline,))

    def backoff_cap(self, retry: int) -> float:
        """Upper bound of the delay before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            return 0.0
        # Cap the exponent so huge retry counts cannot overflow a float.
        return min(self.max_delay, self.base_delay * self.multiplier ** min(retry - 1, 64))

    def backoff(self, retry: int, rng: random.Random) -> float:
        """A full-jitter delay for retry number ``retry``."""
        return rng.uniform(0.0, self.backoff_cap(retry))


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures -> half-open once ``reset_timeout``
    seconds have passed (one trial call is let through) -> closed on the trial's success, open again on its
    failure. A trial that ends without a verdict (the server was busy, or the caller gave up on an error it
    cannot classify) must be given back with ``release()``, or the endpoint stays blocked. Thread-safe: state
    changes happen under one lock, so concurrent callers get one trial between them."""

    def __init__(self, failure_threshold: int = 3, reset_timeout: float = 10.0, clock: Optional[Clock] = None):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1, got %r" % (failure_threshold,))
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock or Clock()
        self._state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._trial_in_flight = False
        self._lock = threading.RLock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self.clock.now() - self.opened_at >= self.reset_timeout:
                self._state = HALF_OPEN
                self._trial_in_flight = False
            return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when it already would)."""
        with self._lock:
            if self.state != OPEN:
                return 0.0
            return max(0.0, self.opened_at + self.reset_timeout - self.clock.now())

    def allow(self) -> bool:
        """Whether a call may go through now. In half-open state only one trial at a time is allowed."""
        with self._lock:
            state = self.state
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self.consecutive_failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self.consecutive_failures += 1
            self._trial_in_flight = False
            if self._state == HALF_OPEN or self.consecutive_failures >= self.failure_threshold:
                self._state = OPEN
                self.opened_at = self.clock.now()

    def release(self) -> None:
        """The call this breaker let through ended without a verdict: free the half-open trial slot and change
        nothing else."""
        with self._lock:
            self._trial_in_flight = False

    def describe(self) -> str:
        with self._lock:
            state = self.state
            text = "%s (%d consecutive failures" % (state, self.consecutive_failures)
            if state == OPEN:
                text += ", trial in %.1f s" % self.retry_in()
            return text + ")"


class PollTimeout(Exception):
    """The condition did not hold before the deadline; ``last`` is the last observed state."""

    def __init__(self, what: str, timeout: float, last: object, polls: int):
        self.what = what
        self.timeout = timeout
        self.last = last
        self.polls = polls
        super().__init__("%s did not happen within %.1f s (%d checks); last observed: %r"
                         % (what, timeout, polls, last))


def wait_argument_spec() -> Dict[str, Dict[str, Any]]:
    """Argument spec of the wait options (documented by the doc fragment mlops.mlflow_ha.wait)."""
    return dict(
        wait_timeout=dict(type="float", default=0),
        poll_interval=dict(type="float", default=2),
    )


class Watched:
    """Base of the observations a module waits on (the *_info modules' check classes): how many checks it took, how
    long, and whether a requested wait ran out. ``Watch.stamped()`` sets them; until then these class defaults
    hold. Not dataclass fields, so the check classes keep their own fields in their own order."""

    checks: int = 0
    waited: float = 0.0
    gave_up: bool = False

    def summary(self) -> Optional[str]:
        """The look in one line for a failure sentence; None when the module has none."""
        return None

    def waited_clause(self) -> str:
        """What a failure sentence says about the wait (see ``waited_clause``)."""
        return waited_clause(self.gave_up, self.waited, self.checks, self.summary() if self.gave_up else None)


def waited_clause(gave_up: bool, waited: float, checks: int, last_look: Optional[str] = None) -> str:
    """`` after waiting 12.0 s (6 checks; last look: ...)`` for a module's failure sentence when a requested wait
    ran out; empty when no wait was asked or the condition held."""
    if not gave_up:
        return ""
    detail = "%d checks" % checks + ("; last look: %s" % last_look if last_look else "")
    return " after waiting %.1f s (%s)" % (waited, detail)


@dataclass
class Watch(Generic[T]):
    """What ``watch`` saw: the last observation, whether the condition held on it, how many checks it took and
    how long, and whether a wait that was asked for ran out (``gave_up``; False when no wait was asked)."""

    last: T
    held: bool
    checks: int
    waited: float
    gave_up: bool

    def stamped(self) -> T:
        """The last observation carrying ``checks``, ``waited`` and ``gave_up``: the convention of every
        ``*_info`` module, whose observation classes have those three fields and report them as facts."""
        self.last.checks = self.checks
        self.last.waited = self.waited
        self.last.gave_up = self.gave_up
        return self.last


def watch(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    interval: float,
    clock: Optional[Clock] = None,
) -> Watch[T]:
    """Call ``observe`` every ``interval`` seconds until ``done(observation)`` holds or ``timeout`` would pass
    before the next check, and return what was seen. Never raises for time: a module reports the last look
    (its problems name what is wrong) rather than an exception. The check always runs at least once."""
    clock = clock or Clock()
    start = clock.now()
    checks = 0
    while True:
        last = observe()
        checks += 1
        elapsed = clock.now() - start
        if done(last):
            return Watch(last, True, checks, elapsed, False)
        if elapsed + interval > timeout:
            return Watch(last, False, checks, elapsed, timeout > 0)
        clock.sleep(interval)


def poll_until(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    interval: float,
    what: str,
    clock: Optional[Clock] = None,
) -> Tuple[T, float]:
    """``watch`` for callers that need the condition: returns ``(observation, seconds_waited)``; raises
    ``PollTimeout`` with the last observation when ``timeout`` passes first."""
    seen = watch(observe, done, timeout, interval, clock)
    if not seen.held:
        raise PollTimeout(what, timeout, seen.last, seen.checks)
    return seen.last, seen.waited


class RetryError(Exception):
    """``call_with_retry`` gave up; ``attempts`` holds one line per try and ``last`` the last exception."""

    def __init__(self, what: str, attempts: list, last: BaseException, spent: float):
        self.what = what
        self.attempts = attempts
        self.last = last
        self.spent = spent
        super().__init__("%s failed after %d attempt(s) in %.1f s: %s" % (
            what, len(attempts), spent, "; ".join(attempts)))


def call_with_retry(
    fn: Callable[[], T],
    what: str,
    retryable: Callable[[BaseException], bool],
    policy: Optional[RetryPolicy] = None,
    clock: Optional[Clock] = None,
    rng: Optional[random.Random] = None,
) -> Tuple[T, int]:
    """Call ``fn`` until it returns, retrying exceptions that ``retryable`` accepts with full-jitter backoff,
    bounded by the policy's attempts and deadline. Returns ``(result, attempts)``; raises ``RetryError``
    (or the exception itself when it is not retryable)."""
    policy = policy or RetryPolicy()
    clock = clock or Clock()
    rng = rng or random.Random()
    start = clock.now()
    attempts: list = []
    while True:
        try:
            return fn(), len(attempts) + 1
        except Exception as err:
            attempts.append("[%d] %s: %s" % (len(attempts) + 1, type(err).__name__, " ".join(str(err).split())[:200]))
            if not retryable(err):
                raise
            if len(attempts) >= policy.max_attempts:
                raise RetryError(what, attempts, err, clock.now() - start) from err
            delay = policy.backoff(len(attempts), rng)
            if clock.now() - start + delay >= policy.deadline:
                raise RetryError(what, attempts, err, clock.now() - start) from err
            clock.sleep(delay)
