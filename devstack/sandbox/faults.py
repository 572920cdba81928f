"""Fault injection: what can go wrong (`Faults`, a provider as it really behaves by default) and
the faults in force with their random draws (`FaultState`), shared by the HTTP front, the
dialects, the executor and the callback deliverer."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

from .models import ApiResponse


@dataclass(frozen=True)
class Faults:
    """Fault injection. The defaults are a provider as it really behaves, not an idealised
    one: downloads redirect and CloudConvert's export/url files may lack `size`; nothing else
    goes wrong.

    latency_seconds: added before every API answer.
    fail_rate_429 / fail_rate_503: share (0..1) of job creations refused with that status and
        a Retry-After of `retry_after_seconds`: integer seconds, or with
        `retry_after_http_date` an IMF-fixdate that many seconds (rounded up) from now.
    timeout_rate: share of accepted job creations whose answer is held for `timeout_seconds`
        after the job was created and started, so a client with a shorter read timeout sees a
        timeout for a job that exists (a blind retry makes a duplicate).
    fail_after_create_rate: share of job creations (CloudConvert v1: process starts) answered
        `fail_after_create_status` (502, 503 or 504) although the job was made and runs, as
        when a gateway loses the answer: a blind retry makes a duplicate.
    drop_download_rate: share of GET /files/... downloads that send the full Content-Length,
        then only `drop_after_bytes` of the body, then close the connection.
    fail_operations: neutral operation kinds ("import/s3", "convert", ...) whose tasks always
        fail, with that operation's usual error code.
    duplicate_callbacks: extra copies of a callback sent after it was accepted.
    callback_delay_seconds: wait before the first delivery attempt.
    redirect_downloads: GET /files/... answers 302 to the same file on the sandbox's storage
        host (another port), as the providers' CDNs redirect download URLs (on by default;
        False serves the file at once).
    omit_export_url_size: CloudConvert v2 export/url result files come without `size`, which
        CloudConvert documents as optional (on by default; False sends it).
    drop_callbacks: every callback is lost, never sent, as to a webhook unreachable past the
        provider's retries; Sandbox.deliver_dropped() sends the lost ones late.
    host_unavailable_failures: CloudConvert v1 answers a failed process's URL with 503 and
        a Retry-After (no conversion host was available) instead of 400/422.
    max_concurrent_jobs: jobs of one dialect (the sandbox's account) that may run at once;
        a job creation beyond it is refused as the provider does (CloudConvert v2: 402 "too
        many jobs at once"; the others: 429 with Retry-After `retry_after_seconds`). None:
        no cap.
    max_requests_per_second: API requests per API key within any one second; more are
        answered 429 with Retry-After 1 and X-RateLimit-Limit / -Remaining, as FreeConvert
        documents. None: no limit.
    seed: makes the random draws repeatable (re-seeds when set with Sandbox.set_faults)."""

    latency_seconds: float = 0.0
    fail_rate_429: float = 0.0
    fail_rate_503: float = 0.0
    retry_after_seconds: int = 1
    retry_after_http_date: bool = False
    timeout_rate: float = 0.0
    timeout_seconds: float = 5.0
    fail_after_create_rate: float = 0.0
    fail_after_create_status: int = 502
    drop_download_rate: float = 0.0
    drop_after_bytes: int = 1024
    fail_operations: frozenset[str] = frozenset()
    duplicate_callbacks: int = 0
    callback_delay_seconds: float = 0.0
    redirect_downloads: bool = True
    omit_export_url_size: bool = True
    drop_callbacks: bool = False
    host_unavailable_failures: bool = False
    max_concurrent_jobs: int | None = None
    max_requests_per_second: float | None = None
    seed: int | None = None


class FaultState:
    """The faults in force, changeable while the sandbox runs, and the random draws that
    decide which requests, downloads and jobs they hit."""

    def __init__(self, faults: Faults, lock: threading.RLock) -> None:
        self._faults = faults
        self._lock = lock
        self._rng = random.Random(faults.seed)
        # API key -> monotonic times of its requests within the last second
        self._recent: dict[str, deque[float]] = {}

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults in force; a seed given re-seeds the random draws."""
        with self._lock:
            self._faults = faults
            if faults.seed is not None:
                self._rng.seed(faults.seed)

    def draw(self, rate: float) -> bool:
        """True for a `rate` share (0..1) of calls; rates of 0 and 1 use no randomness."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._rng.random() < rate

    def answer_created(self, response: ApiResponse, *, may_hold: bool = True) -> ApiResponse:
        """The answer to a request that made a job, after the faults that lose it: a gateway
        error instead (fail_after_create_rate), or the answer held (timeout_rate, when
        `may_hold`). The job exists and runs either way."""
        faults = self.faults
        if self.draw(faults.fail_after_create_rate):
            status = faults.fail_after_create_status
            return ApiResponse(status, json.dumps({"message": HTTPStatus(status).phrase}).encode(),
                               {"Content-Type": "application/json"})
        if may_hold and self.draw(faults.timeout_rate):
            return ApiResponse(response.status, response.body, response.headers,
                               hold_seconds=faults.timeout_seconds)
        return response

    def draw_rejection(self, faults: Faults) -> int | None:
        """429 or 503 for the configured share of job creations, else None."""
        if faults.fail_rate_429 <= 0 and faults.fail_rate_503 <= 0:
            return None
        with self._lock:
            roll = self._rng.random()
        if roll < faults.fail_rate_429:
            return 429
        if roll < faults.fail_rate_429 + faults.fail_rate_503:
            return 503
        return None

    def over_rate(self, api_key: str) -> bool:
        """Count a request of `api_key`; True when it is over max_requests_per_second (the
        refused request counts too, as a provider's window does)."""
        limit = self.faults.max_requests_per_second
        if limit is None:
            return False
        now = time.monotonic()
        with self._lock:
            window = self._recent.setdefault(api_key, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            window.append(now)
            return len(window) > limit
