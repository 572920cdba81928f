"""The sandbox's threads: fixed pools of daemon workers, a timer heap that runs delayed work on
a pool, and the count of work in flight that wait_idle waits on. The executor runs jobs on one
pool, the callback deliverer sends callbacks on another."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("devstack.sandbox")


class Pool:
    """A fixed set of daemon worker threads, started on first use. Unlike ThreadPoolExecutor's
    workers they never hold up interpreter exit, as a job stuck in a 30 s download would."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = max(1, workers)
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue `fn`; RuntimeError once shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} pool is shut down")
            if not self._started:
                self._started = True
                for number in range(self._workers):
                    threading.Thread(target=self._work, name=f"{self._name}-{number}",
                                     daemon=True).start()
            self._queue.put(fn)

    def shutdown(self) -> None:
        """Drop queued work; running work ends on its own."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            for _ in range(self._workers):
                self._queue.put(None)

    def _work(self) -> None:
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except Exception:
                log.exception("sandbox %s worker: unexpected error", self._name)


class Timers:
    """Runs callables on `pool` once their delay has passed: one thread and a heap, rather
    than one sleeping thread per pending callback delay or retry backoff."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        if delay <= 0:
            self._pool.submit(fn)
            return
        with self._wake:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-timers",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), fn))
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._heap.clear()
            self._wake.notify()

    def _loop(self) -> None:
        with self._wake:
            while not self._closed:
                if not self._heap:
                    self._wake.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                fn = heapq.heappop(self._heap)[2]
                try:
                    self._pool.submit(fn)
                except RuntimeError:  # the pool was shut down: the sandbox is stopping
                    return


class Activity:
    """Jobs not yet ended plus callback deliveries not yet done or given up, counted under
    the sandbox's lock; `stopping` cuts every wait short."""

    def __init__(self, lock: threading.RLock) -> None:
        self._idle = threading.Condition(lock)
        self._active = 0
        self.stopping = threading.Event()

    def begin(self) -> None:
        with self._idle:
            self._active += 1

    def end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_until(self, ended: Callable[[], bool], timeout: float) -> None:
        """Block until `ended()` (read under the lock), the timeout passes or the sandbox
        stops; job ends wake it, task ends are seen within a tenth of a second."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while not ended() and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._idle.wait(min(left, 0.1))

    def wait_idle(self, timeout: float) -> None:
        if self.stopping.is_set():
            return
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout=timeout):
                raise TimeoutError(f"{self._active} sandbox job(s) or callback(s) still running "
                                   f"after {timeout}s")
