"""The bridge's own budget per provider: how many job creations one execution environment has
in flight at once, and how many requests per second it sends.

Providers cap concurrent jobs and request rates per account, so the configured limits are the
account's (:class:`ProviderLimits`), and each execution environment that may run at once takes
an equal share (:func:`environment_share`): the S3 trigger's environments are capped by its
event source's ``MaximumConcurrency``, which the template passes on as
``CONVBRIDGE_TRIGGER_CONCURRENCY``, so the shares of all of them stay within the account.
The bridge cannot see the account's other clients, so the provider's answer (429,
CloudConvert's 402) stays the authority and is met with backpressure
(:mod:`convbridge.backpressure`); this budget only keeps the environments from bursting into
those answers. A create that would wait past the
budget's patience is not sent: it raises :class:`~convbridge.errors.ProviderBusy`, like the
provider's own "not now", so the event is deferred instead of the invocation spinning.

Failing fast only helps where the event can wait somewhere else: the SQS-fed trigger marks
its records with :func:`deferring`. Elsewhere (a direct invocation, an HTTP delivery) a busy
answer is retried inside the invocation as before, up to its deadline.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from convbridge.errors import ProviderBusy
from convbridge.http import seconds_left

#: the longest a request waits for a slot or a token inside an invocation before it is
#: deferred instead; long enough to smooth a batch, short enough not to burn the invocation
PATIENCE_SECONDS = 5.0
#: how much longer than the provider's window the bridge spaces its requests, for the jitter
#: between sending a request and its arrival
RATE_HEADROOM = 0.05


_deferring: contextvars.ContextVar[bool] = contextvars.ContextVar("deferring", default=False)


@contextmanager
def deferring() -> Iterator[None]:
    """Inside the block a busy provider raises ProviderBusy at once: the caller defers."""
    token = _deferring.set(True)
    try:
        yield
    finally:
        _deferring.reset(token)


def can_defer() -> bool:
    """Whether the event being handled can wait outside this invocation."""
    return _deferring.get()


@dataclass(frozen=True)
class ProviderLimits:
    """``max_concurrent_jobs``: jobs at once; ``requests_per_second``: requests of any kind.
    Configured per provider account; :func:`environment_share` gives one environment's part,
    where the jobs bound the job creations it has in flight."""

    max_concurrent_jobs: int
    requests_per_second: float


def environment_share(account: ProviderLimits, environments: int) -> ProviderLimits:
    """One of ``environments`` equal shares of ``account``, rounded down so that together they
    never exceed it, except that every environment keeps at least one job: with more
    environments than the account has jobs, the shares sum to ``environments`` jobs, and the
    provider's busy answers defer the excess (``convbridge check-rules --template`` warns)."""
    if environments < 1:
        raise ValueError(f"environments must be at least 1, not {environments}")
    rate = account.requests_per_second / environments
    while rate * environments > account.requests_per_second:  # float rounding, at most a step
        rate = math.nextafter(rate, 0.0)
    return ProviderLimits(max_concurrent_jobs=max(1, account.max_concurrent_jobs // environments),
                          requests_per_second=rate)


def oversubscribed(account: ProviderLimits, environments: int) -> bool:
    """More environments may run at once than the account has jobs: the one-job minimum of each
    share puts the shares over the account's limit."""
    return environments > account.max_concurrent_jobs


class ProviderBudget:
    """A semaphore for job creations and a sliding window for requests, shared by the threads
    of one environment (the batch's records run concurrently).

    Providers count requests in a window (FreeConvert's X-RateLimit-Limit / -Remaining,
    CloudConvert's X-RateLimit-*), refused ones included. A token bucket refilling at exactly
    the rate lets a burst of one second's tokens and the next second's refill into one window,
    and requests sent at the limit arrive with jitter: in a 2,000-upload burst against a
    sandbox counting 10 per second, half the creates were refused with 429, each refusal a
    wasted request and a deferred upload. So the n-th request waits until the one
    ``max(1, rate)`` requests before it is a window (plus ``RATE_HEADROOM``) old, and a 429
    (:meth:`hold`) stops every request of the environment for its Retry-After."""

    def __init__(self, name: str, limits: ProviderLimits, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 patience_seconds: float = PATIENCE_SECONDS) -> None:
        self.name = name
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._patience = patience_seconds
        self._jobs = threading.BoundedSemaphore(limits.max_concurrent_jobs)
        self._lock = threading.Lock()
        # a window holds at most one second's requests, and at least one request
        self._per_window = max(1, math.floor(limits.requests_per_second))
        self._window = self._per_window / limits.requests_per_second * (1 + RATE_HEADROOM)
        #: when the last ``_per_window`` requests were (or are to be) sent, oldest first
        self._sent: deque[float] = deque(maxlen=self._per_window)
        self._resume_at = clock()

    def _patience_now(self) -> float:
        return self._patience if can_defer() else seconds_left()

    def pace(self) -> None:
        """Wait for the request's turn; ProviderBusy when the wait would pass the patience."""
        with self._lock:
            now = self._clock()
            turn = max(now, self._resume_at)
            if len(self._sent) == self._per_window:
                turn = max(turn, self._sent[0] + self._window)
            wait = turn - now
            # a request whose turn is now never waits, however little time is left: the
            # budget is not the invocation's deadline (the HTTP layer keeps that)
            if wait > 0 and wait > self._patience_now():
                raise ProviderBusy(f"{self.name}: over the bridge's budget of "
                                   f"{self.limits.requests_per_second:g} requests per second",
                                   retry_after=wait)
            # the turn is taken now: later callers queue behind it
            self._sent.append(turn)
        if wait > 0:
            self._sleep(wait)

    def hold(self, seconds: float | None) -> None:
        """The provider said "too many requests": no request of this environment goes out for
        ``seconds`` (its Retry-After; one second when it gave none), since each refused
        request still counts in the provider's window."""
        with self._lock:
            self._resume_at = max(self._resume_at,
                                  self._clock() + (seconds if seconds else 1.0))

    @contextmanager
    def job_slot(self) -> Iterator[None]:
        """Hold one of ``max_concurrent_jobs`` creation slots; ProviderBusy when none frees
        within the patience."""
        if not self._jobs.acquire(timeout=max(0.0, self._patience_now())):
            raise ProviderBusy(f"{self.name}: {self.limits.max_concurrent_jobs} job creations "
                               "already in flight (the bridge's budget)")
        try:
            yield
        finally:
            self._jobs.release()
