"""What the dialects share, independent of any of them: the job store (jobs.py), the executor
keyed by operation kind (executor.py), the callback deliverer (callbacks.py) and the faults in
force (faults.py), under one lock. A dialect module translates its wire format into the neutral
operation specs of models.py, renders jobs back into its own JSON and builds the signed callback
body; everything else happens behind `Backend` so that every dialect behaves alike."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .callbacks import CallbackDeliverer
from .executor import Executor
from .faults import Faults, FaultState
from .jobs import JobStore
from .models import ApiResponse, CallbackBuilder, Delivery, Job, Task, TaskSpec
from .sftp_io import Uploads
from .storage_io import FileStore, Spool
from .workers import Activity


class Backend:
    """All jobs of one sandbox, their execution and their callbacks."""

    def __init__(
        self,
        *,
        faults: Faults,
        files: FileStore,
        public_url: Callable[[], str],
        callback_attempts: int,
        callback_backoff_seconds: float,
        job_workers: int = 4,
        callback_workers: int = 8,
    ) -> None:
        self.files = files
        # Re-entrant: dialects render a job while holding it, and rendering may look up tasks.
        self.lock = threading.RLock()
        self._activity = Activity(self.lock)
        self.stopping = self._activity.stopping
        self._faults = FaultState(faults, self.lock)
        self.store = JobStore(self.lock)
        self.callbacks = CallbackDeliverer(
            lock=self.lock, activity=self._activity, faults=self._faults,
            attempts=callback_attempts, backoff_seconds=callback_backoff_seconds,
            workers=callback_workers,
        )
        self.executor = Executor(
            lock=self.lock, activity=self._activity, faults=self._faults, files=files,
            public_url=public_url, deliverer=self.callbacks, workers=job_workers,
        )

    @property
    def spool(self) -> Spool:
        return self.executor.spool

    @property
    def uploads(self) -> Uploads:
        return self.executor.uploads

    # -- storage endpoints -------------------------------------------------------------------

    def set_azure_endpoint(self, account: str, endpoint: str) -> None:
        self.executor.set_azure_endpoint(account, endpoint)

    def set_gcs_endpoint(self, endpoint: str | None) -> None:
        self.executor.set_gcs_endpoint(endpoint)

    # -- faults ------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults.faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults in force; a seed given re-seeds the random draws."""
        self._faults.set_faults(faults)

    def draw(self, rate: float) -> bool:
        """True for a `rate` share (0..1) of calls; rates of 0 and 1 use no randomness."""
        return self._faults.draw(rate)

    def answer_created(self, response: ApiResponse, *, may_hold: bool = True) -> ApiResponse:
        """The answer to a request that made a job, after the faults that lose it."""
        return self._faults.answer_created(response, may_hold=may_hold)

    def draw_rejection(self, faults: Faults) -> int | None:
        """429 or 503 for the configured share of job creations, else None."""
        return self._faults.draw_rejection(faults)

    def over_rate(self, api_key: str) -> bool:
        """Count a request of `api_key`; True when it is over max_requests_per_second."""
        return self._faults.over_rate(api_key)

    def over_job_cap(self, dialect: str) -> bool:
        """True when the dialect already runs max_concurrent_jobs jobs (checked and made under
        separate locks: a burst may pass the cap by the creations in flight at once)."""
        cap = self.faults.max_concurrent_jobs
        if cap is None:
            return False
        with self.lock:
            return sum(1 for job in self.store.jobs(dialect) if job.ended_at is None) >= cap

    # -- jobs --------------------------------------------------------------------------------

    def create_job(
        self, dialect: str, specs: list[TaskSpec], tag: str | None, webhook_url: str | None
    ) -> Job:
        return self.store.create_job(dialect, specs, tag, webhook_url)

    def job(self, job_id: str) -> Job | None:
        return self.store.job(job_id)

    def task(self, task_id: str) -> Task | None:
        return self.store.task(task_id)

    def jobs(self, dialect: str, *, tag: str | None = None) -> list[Job]:
        """The dialect's jobs, oldest first; with `tag`, only those whose tag equals it."""
        return self.store.jobs(dialect, tag=tag)

    def job_count(self) -> int:
        return self.store.job_count()

    def forget(self, job_id: str) -> bool:
        """Remove a job, as providers delete jobs some hours after they ended."""
        return self.store.forget(job_id)

    def run(self, job: Job, build_callback: CallbackBuilder) -> None:
        """Execute `job`; `build_callback` is asked for the callbacks once it has ended."""
        self.executor.run(job, build_callback)

    # -- callbacks ---------------------------------------------------------------------------

    def deliveries(self) -> list[Delivery]:
        return self.callbacks.deliveries()

    def deliver_dropped(self) -> int:
        """Send every callback the drop fault kept back, as late deliveries; returns how
        many."""
        return self.callbacks.deliver_dropped()

    # -- waiting and stopping ----------------------------------------------------------------

    def wait_until(self, ended: Callable[[], bool], timeout: float) -> None:
        """Block until `ended()` (read under the lock), the timeout passes or the sandbox
        stops."""
        self._activity.wait_until(ended, timeout)

    def wait_idle(self, timeout: float) -> None:
        """Block until no job runs and no callback is pending; TimeoutError otherwise."""
        self._activity.wait_idle(timeout)

    def close(self) -> None:
        """Stop the pools and timers, cut short every wait (injected delays, held answers)
        and remove spilled files. Work already running ends on its own; queued work is
        dropped."""
        self.stopping.set()
        self.callbacks.close()
        self.executor.close()
