"""The sandbox's callback deliverer: sends the callbacks a dialect built for an ended job, with
retries on the dialect's own timing (or the sandbox's quick schedule), duplicates after an
accepted delivery, and the drop fault that keeps callbacks back until deliver_dropped. Waits
between attempts sit on a timer heap rather than on sleeping threads, so hundreds of jobs with
delayed callbacks stay cheap. Every attempt is logged as a Delivery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx

from .faults import FaultState
from .models import Callback, Delivery
from .storage_io import public_url_form
from .workers import Activity, Pool, Timers

log = logging.getLogger("devstack.sandbox")

CALLBACK_TIMEOUT_SECONDS = 10.0


class CallbackDeliverer:
    """Delivers callbacks on a pool of its own; each delivery counts in `activity` until its
    last attempt or duplicate was sent or it was given up."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        activity: Activity,
        faults: FaultState,
        attempts: int,
        backoff_seconds: float,
        workers: int = 8,
    ) -> None:
        self._lock = lock
        self._activity = activity
        self._faults = faults
        self._attempts = max(1, attempts)
        self._backoff = backoff_seconds
        self._deliveries: list[Delivery] = []
        self._dropped: list[tuple[str, Callback]] = []
        self._pool = Pool(workers, "sandbox-callback")
        self._timers = Timers(self._pool)
        # Building a client costs ~15 ms. No keep-alive, so a receiver that drops idle
        # connections cannot turn a reused socket into a spurious delivery failure.
        self._client = httpx.Client(
            timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def deliver(self, job_id: str, built: Callback | list[Callback] | None) -> None:
        """Deliver what a dialect built for an ended job: a job's own callback URL and the
        account's webhooks are delivered independently."""
        for callback in [built] if isinstance(built, Callback) else built or []:
            self._start(job_id, callback)

    def deliver_dropped(self) -> int:
        """Send every callback the drop fault kept back, as late deliveries; returns how
        many."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for job_id, callback in dropped:
            self._start(job_id, callback)
        return len(dropped)

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def close(self) -> None:
        """Drop pending waits and queued attempts; attempts already running end on their
        own."""
        self._timers.close()
        self._pool.shutdown()

    def _start(self, job_id: str, callback: Callback) -> None:
        faults = self._faults.faults
        with self._lock:
            if faults.drop_callbacks:
                self._dropped.append((job_id, callback))
                return
            self._activity.begin()
        self._later(
            faults.callback_delay_seconds,
            lambda: self._attempt(job_id, callback, 1, faults.duplicate_callbacks),
        )

    def _later(self, delay: float, step: Callable[[], None]) -> None:
        try:
            self._timers.call_later(delay, step)
        except RuntimeError:  # the pool was shut down: the sandbox is stopping
            self._activity.end()

    def _attempt(self, job_id: str, callback: Callback, attempt: int, duplicates: int) -> None:
        finished = True
        try:
            if self._activity.stopping.is_set():
                return
            status = self._post(job_id, callback, attempt)
            timing = callback.timing
            attempts = timing.attempts if timing else self._attempts
            if callback.retry(status) and attempt < attempts:
                finished = False
                self._later(
                    timing.retry_seconds if timing else self._backoff * 2 ** (attempt - 1),
                    lambda: self._attempt(job_id, callback, attempt + 1, duplicates),
                )
                return
            if status is not None and 200 <= status < 300:
                for extra in range(1, duplicates + 1):
                    self._post(job_id, callback, attempt + extra)
        except Exception:
            log.exception("callback delivery for job %s crashed", job_id)
        finally:
            if finished:
                self._activity.end()

    def _post(self, job_id: str, callback: Callback, attempt: int) -> int | None:
        # Only scheme, host and path are logged: callback URLs may carry a per-job token.
        shown = public_url_form(callback.url)
        try:
            timeout = (callback.timing.timeout_seconds if callback.timing
                       else CALLBACK_TIMEOUT_SECONDS)
            response = self._client.request(callback.method, callback.url,
                                             content=callback.body or None,
                                             headers=dict(callback.headers), timeout=timeout)
            status: int | None = response.status_code
            log.info("callback %s %s attempt %d -> %s", callback.event, shown, attempt, status)
        except httpx.HTTPError as exc:
            status = None
            log.info("callback %s %s attempt %d failed: %s", callback.event, shown, attempt,
                     type(exc).__name__)
        with self._lock:
            self._deliveries.append(Delivery(job_id, callback.event, status, attempt,
                                             callback.url))
        return status
