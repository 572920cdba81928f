"""State and execution for the sandbox, independent of any provider dialect: jobs made of tasks,
run in dependency order on a small worker pool, with real downloads, conversions and uploads,
followed by callback delivery with retries (on a pool of its own, with waits kept on a timer heap
rather than on sleeping threads, so hundreds of jobs with delayed callbacks stay cheap). A
dialect module (cloudconvert_v2.py and its future siblings) translates its wire format into the
neutral operation specs defined here, renders jobs back into its own JSON, and builds the signed
callback body; everything else lives here so that every dialect behaves alike. Fault injection
(`Faults`) is configured here for the same reason."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, ClassVar, Literal, Protocol

import httpx

from .azure_io import AzureAccess, read_azure, write_azure
from .convert import (
    CONVERSION_FAILED,
    ConversionError,
    convert_pages,
    extension,
    output_filename,
)
from .gcs_io import GcsAccess, write_gcs
from .sftp_io import ExportSftp, ImportSftp, ImportUpload, Uploads, read_sftp, write_sftp
from .storage_io import (
    FileBlob,
    FileStore,
    S3Access,
    Spool,
    StorageError,
    download_client,
    fetch_url,
    filename_from_url,
    public_url_form,
    read_s3,
    write_s3,
)

log = logging.getLogger("devstack.sandbox")

Status = Literal["waiting", "processing", "finished", "error"]

IMPORT_FAILED = "IMPORT_FAILED"
EXPORT_FAILED = "EXPORT_FAILED"
INPUT_TASK_FAILED = "INPUT_TASK_FAILED"
SANDBOX_ERROR = "SANDBOX_ERROR"

CALLBACK_TIMEOUT_SECONDS = 10.0


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
    seed: int | None = None


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request as the server hands it to a dialect (header names lower-cased)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class ApiResponse:
    """An answer for the server to send; `hold_seconds` > 0 makes it wait that long first
    (the timeout fault)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    hold_seconds: float = 0.0


class Dialect(Protocol):
    """A provider's API, served below `prefix` (e.g. "/v2") on the sandbox's port."""

    prefix: str

    def handle(self, request: ApiRequest) -> ApiResponse: ...


# Neutral operation specs. Dialects build these from their own field names.


@dataclass(frozen=True)
class ImportUrl:
    url: str
    filename: str | None = None
    headers: Mapping[str, str] | None = None
    kind: ClassVar[str] = "import/url"


@dataclass(frozen=True)
class ImportS3:
    access: S3Access
    key: str | None = None
    key_prefix: str | None = None
    filename: str | None = None
    kind: ClassVar[str] = "import/s3"


@dataclass(frozen=True)
class Convert:
    output_format: str
    input_format: str | None = None
    options: Mapping[str, object] | None = None
    filename: str | None = None
    #: each page of a paged input to a one-page format becomes a file (CloudConvert v2)
    split_pages: bool = False
    kind: ClassVar[str] = "convert"


@dataclass(frozen=True)
class ExportS3:
    access: S3Access
    key: str | None = None
    key_prefix: str | None = None
    acl: str | None = None
    cache_control: str | None = None
    metadata: Mapping[str, str] | None = None
    content_type: str | None = None
    server_side_encryption: str | None = None
    tagging: str | None = None
    kind: ClassVar[str] = "export/s3"


@dataclass(frozen=True)
class ExportUrl:
    """filename: what the download is called; otherwise the converted file's name, or with
    `guid_names` a random one (FreeConvert names results by id unless told a name)."""

    filename: str | None = None
    guid_names: bool = False
    kind: ClassVar[str] = "export/url"


@dataclass(frozen=True)
class ImportAzureBlob:
    access: AzureAccess
    blob: str | None = None
    blob_prefix: str | None = None
    filename: str | None = None
    kind: ClassVar[str] = "import/azure/blob"


@dataclass(frozen=True)
class ExportAzureBlob:
    access: AzureAccess
    blob: str | None = None
    blob_prefix: str | None = None
    metadata: Mapping[str, str] | None = None
    kind: ClassVar[str] = "export/azure/blob"

    # export_keys names outputs the same way for both clouds
    @property
    def key(self) -> str | None:
        return self.blob

    @property
    def key_prefix(self) -> str | None:
        return self.blob_prefix


@dataclass(frozen=True)
class ExportGcs:
    access: GcsAccess
    file: str | None = None
    file_prefix: str | None = None
    kind: ClassVar[str] = "export/google-cloud-storage"

    # export_keys names outputs the same way for every cloud
    @property
    def key(self) -> str | None:
        return self.file

    @property
    def key_prefix(self) -> str | None:
        return self.file_prefix


Operation = (ImportUrl | ImportS3 | Convert | ExportS3 | ExportUrl | ImportAzureBlob
             | ExportAzureBlob | ExportGcs | ImportSftp | ExportSftp | ImportUpload)

_FAILURE_CODE = {
    "import/url": IMPORT_FAILED,
    "import/s3": IMPORT_FAILED,
    "convert": CONVERSION_FAILED,
    "export/s3": EXPORT_FAILED,
    "export/url": EXPORT_FAILED,
    "import/azure/blob": IMPORT_FAILED,
    "export/azure/blob": EXPORT_FAILED,
    "export/google-cloud-storage": EXPORT_FAILED,
    "import/sftp": IMPORT_FAILED,
    "export/sftp": EXPORT_FAILED,
    "import/upload": IMPORT_FAILED,
}


@dataclass(frozen=True)
class TaskSpec:
    """A task as a dialect submits it: its name, the dialect's operation string and raw
    payload (kept for rendering), the neutral spec, and the names of its input tasks."""

    name: str
    operation: str
    spec: Operation
    payload: Mapping[str, Any]
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultFile:
    filename: str
    size: int
    url: str | None = None


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class Task:
    id: str
    name: str
    job_id: str
    operation: str
    spec: Operation
    payload: Mapping[str, Any]
    input_ids: list[str]
    created_at: str
    status: Status = "waiting"
    message: str | None = None
    code: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    result_files: list[ResultFile] | None = None
    outputs: list[FileBlob] = field(default_factory=list, repr=False)


@dataclass
class Job:
    id: str
    dialect: str
    tag: str | None
    webhook_url: str | None
    tasks: list[Task]
    created_at: str
    status: Status = "waiting"
    started_at: str | None = None
    ended_at: str | None = None


@dataclass(frozen=True)
class CallbackTiming:
    """A provider's own delivery schedule: each attempt waits `timeout_seconds` for the
    answer, retries come `retry_seconds` apart, at most `attempts` tries in all."""

    timeout_seconds: float
    retry_seconds: float
    attempts: int


@dataclass(frozen=True)
class Callback:
    """One callback, ready to send: the dialect signs `body` and decides which answers
    are worth retrying (`retry(status)`, status None for a network error). `timing` None:
    the sandbox's quick test schedule (CALLBACK_TIMEOUT_SECONDS per attempt, exponential
    backoff from `callback_backoff_seconds`, `callback_attempts` tries)."""

    url: str
    event: str
    body: bytes
    headers: Mapping[str, str]
    retry: Callable[[int | None], bool]
    #: CloudConvert v1 calls back with a GET (no body)
    method: str = "POST"
    timing: CallbackTiming | None = None


#: what a dialect sends when a job ends: one callback, several (a job's own URL and the
#: account's webhooks), or none
CallbackBuilder = Callable[["Job"], "Callback | list[Callback] | None"]


@dataclass(frozen=True)
class Delivery:
    job_id: str
    event: str
    status: int | None
    attempt: int
    url: str = ""


class TaskFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def order_by_dependencies(inputs: Mapping[str, Iterable[str]]) -> list[str]:
    """Names in an order where every task comes after its inputs (stable with respect
    to the given order). Raises ValueError naming the tasks caught in a cycle."""
    pending = {name: set(deps) for name, deps in inputs.items()}
    ordered: list[str] = []
    while pending:
        ready = [name for name, deps in pending.items() if not deps - set(ordered)]
        if not ready:
            raise ValueError(", ".join(sorted(pending)))
        ordered.extend(ready)
        for name in ready:
            del pending[name]
    return ordered


_PLACEHOLDER = re.compile(r"%(0?\d*)d")


def export_keys(spec: ExportS3 | ExportAzureBlob | ExportGcs, filenames: list[str]) -> list[str]:
    """Object keys for the exported files: `key` (printf placeholders such as file-%d.pdf
    numbered from 1), else `key_prefix` + filename."""
    if not spec.key:
        return [(spec.key_prefix or "") + name for name in filenames]
    key = spec.key
    if _PLACEHOLDER.search(key):

        def numbered(number: int) -> str:
            return _PLACEHOLDER.sub(lambda m: format(number, m.group(1) + "d"), key)

        return [numbered(number) for number in range(1, len(filenames) + 1)]
    if len(filenames) > 1:
        raise TaskFailure(
            EXPORT_FAILED,
            f"key {key!r} names one object but there are {len(filenames)} files; "
            "use a placeholder such as file-%d.pdf",
        )
    return [key]


class _Pool:
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


class _Timers:
    """Runs callables on `pool` once their delay has passed: one thread and a heap, rather
    than one sleeping thread per pending callback delay or retry backoff."""

    def __init__(self, pool: _Pool) -> None:
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
        self._faults = faults
        self.files = files
        self.spool = Spool()
        self.uploads = Uploads(self.spool)
        self._public_url = public_url
        self._callback_attempts = max(1, callback_attempts)
        self._callback_backoff = callback_backoff_seconds
        self._rng = random.Random(faults.seed)
        # Re-entrant: dialects render a job while holding it, and rendering may look up tasks.
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        # Jobs not yet ended plus callback deliveries not yet done or given up.
        self._active = 0
        self.stopping = threading.Event()
        self._jobs: dict[str, Job] = {}  # in creation order
        self._by_tag: dict[str, list[Job]] = {}
        self._tasks: dict[str, Task] = {}
        self._deliveries: list[Delivery] = []
        self._dropped: list[tuple[str, Callback]] = []
        self._job_pool = _Pool(job_workers, "sandbox-job")
        self._callback_pool = _Pool(callback_workers, "sandbox-callback")
        self._timers = _Timers(self._callback_pool)
        # Shared clients: building one costs ~15 ms. No keep-alive, so a receiver that drops
        # idle connections cannot turn a reused socket into a spurious delivery failure.
        self._downloads = download_client()
        self._callbacks = httpx.Client(
            timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        # Azure storage account name -> blob endpoint (the offline stand-in for DNS)
        self._azure_endpoints: dict[str, str] = {}
        # where GCS tasks reach storage.googleapis.com (an emulator such as fake-gcs-server)
        self._gcs_endpoint: str | None = None

    # -- azure -------------------------------------------------------------------------------

    def set_azure_endpoint(self, account: str, endpoint: str) -> None:
        with self.lock:
            self._azure_endpoints[account] = endpoint

    def _azure_access(self, access: AzureAccess) -> AzureAccess:
        with self.lock:
            endpoint = self._azure_endpoints.get(access.account)
        if endpoint is None:
            raise StorageError(f"storage account {access.account!r} is unknown to the sandbox "
                               "(Sandbox.set_azure_endpoint maps accounts to endpoints)")
        return dataclasses.replace(access, endpoint=endpoint)

    # -- gcs ---------------------------------------------------------------------------------

    def set_gcs_endpoint(self, endpoint: str | None) -> None:
        with self.lock:
            self._gcs_endpoint = endpoint

    def _gcs_access(self, access: GcsAccess) -> GcsAccess:
        with self.lock:
            endpoint = self._gcs_endpoint
        if endpoint is None:
            raise StorageError("Cloud Storage is unreachable from the sandbox "
                               "(Sandbox.set_gcs_endpoint points GCS tasks at an emulator)")
        return dataclasses.replace(access, endpoint=endpoint)

    # -- faults ------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        with self.lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults in force; a seed given re-seeds the random draws."""
        with self.lock:
            self._faults = faults
            if faults.seed is not None:
                self._rng.seed(faults.seed)

    def draw(self, rate: float) -> bool:
        """True for a `rate` share (0..1) of calls; rates of 0 and 1 use no randomness."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self.lock:
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
        with self.lock:
            roll = self._rng.random()
        if roll < faults.fail_rate_429:
            return 429
        if roll < faults.fail_rate_429 + faults.fail_rate_503:
            return 503
        return None

    # -- state -------------------------------------------------------------------------------

    def create_job(
        self, dialect: str, specs: list[TaskSpec], tag: str | None, webhook_url: str | None
    ) -> Job:
        job_id = str(uuid.uuid4())
        created = now()
        ids = {spec.name: str(uuid.uuid4()) for spec in specs}
        tasks = [
            Task(
                id=ids[spec.name],
                name=spec.name,
                job_id=job_id,
                operation=spec.operation,
                spec=spec.spec,
                payload=spec.payload,
                input_ids=[ids[name] for name in spec.inputs],
                created_at=created,
            )
            for spec in specs
        ]
        job = Job(job_id, dialect, tag, webhook_url, tasks, created)
        with self.lock:
            self._jobs[job_id] = job
            if tag is not None:
                self._by_tag.setdefault(tag, []).append(job)
            self._tasks.update({task.id: task for task in tasks})
        return job

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self._jobs.get(job_id)

    def task(self, task_id: str) -> Task | None:
        with self.lock:
            return self._tasks.get(task_id)

    def jobs(self, dialect: str, *, tag: str | None = None) -> list[Job]:
        """The dialect's jobs, oldest first; with `tag`, only those whose tag equals it."""
        with self.lock:
            pool = self._by_tag.get(tag, []) if tag is not None else self._jobs.values()
            return [job for job in pool if job.dialect == dialect]

    def job_count(self) -> int:
        with self.lock:
            return len(self._jobs)

    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    # -- execution ---------------------------------------------------------------------------

    def run(self, job: Job, build_callback: CallbackBuilder) -> None:
        """Execute `job` on the worker pool; `build_callback` is asked for the callback
        once the job has ended."""
        with self.lock:
            self._active += 1
        try:
            self._job_pool.submit(lambda: self._run_job(job, build_callback))
        except RuntimeError:  # the pool was shut down: the sandbox is stopping
            self._finished_one()

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

    def close(self) -> None:
        """Stop the pools and timers, cut short every wait (injected delays, held answers)
        and remove spilled files. Work already running ends on its own; queued work is
        dropped."""
        self.stopping.set()
        self._timers.close()
        self._job_pool.shutdown()
        self._callback_pool.shutdown()
        self.spool.close()

    def _finished_one(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def _run_job(self, job: Job, build_callback: CallbackBuilder) -> None:
        try:
            with self.lock:
                job.status, job.started_at = "processing", now()
            by_id = {task.id: task for task in job.tasks}
            order = order_by_dependencies({t.id: t.input_ids for t in job.tasks})
            for task in (by_id[task_id] for task_id in order):
                self._run_task(task, [by_id[i] for i in task.input_ids])
            with self.lock:
                failed = any(task.status == "error" for task in job.tasks)
                job.status, job.ended_at = ("error" if failed else "finished"), now()
            log.info("job %s %s", job.id, job.status)
            self._release_outputs(job)
            with self.lock:
                built = build_callback(job)
            # a job's own callback URL and the account's webhooks are delivered independently
            for callback in [built] if isinstance(built, Callback) else built or []:
                self._start_delivery(job.id, callback)
        except Exception:
            log.exception("sandbox job %s crashed", job.id)
        finally:
            self._finished_one()

    def _release_outputs(self, job: Job) -> None:
        """Intermediate files are needed only while the job runs; spilled ones that no
        export/url serves are deleted now rather than at stop."""
        with self.lock:
            blobs = [blob for task in job.tasks for blob in task.outputs]
            for task in job.tasks:
                task.outputs = []
        for blob in blobs:
            if blob.path is not None and not self.files.serves(blob.path):
                self.spool.discard(blob)

    def _run_task(self, task: Task, inputs: list[Task]) -> None:
        with self.lock:
            task.status, task.started_at = "processing", now()
        failed_inputs = [t.name for t in inputs if t.status != "finished"]
        try:
            if failed_inputs:
                raise TaskFailure(
                    INPUT_TASK_FAILED, f"Input task {', '.join(failed_inputs)} failed"
                )
            if task.spec.kind in self.faults.fail_operations:
                raise TaskFailure(
                    _FAILURE_CODE[task.spec.kind], "Forced failure (sandbox fault injection)"
                )
            files = [blob for t in inputs for blob in t.outputs]
            outputs, results = self._execute(task.spec, files)
        except TaskFailure as exc:
            outcome: tuple[Status, str | None, str | None] = ("error", exc.code, exc.message)
            outputs, results = [], None
        except Exception as exc:
            log.exception("task %s (%s) crashed", task.id, task.operation)
            outcome = ("error", SANDBOX_ERROR, f"{type(exc).__name__}: {exc}")
            outputs, results = [], None
        else:
            outcome = ("finished", None, None)
        with self.lock:
            task.status, task.code, task.message = outcome
            task.outputs, task.result_files, task.ended_at = outputs, results, now()
        if task.status == "error":
            log.info("task %s (%s) failed: %s %s", task.id, task.operation, task.code,
                     task.message)

    def _execute(
        self, spec: Operation, files: list[FileBlob]
    ) -> tuple[list[FileBlob], list[ResultFile]]:
        outputs: list[FileBlob]
        match spec:
            case ImportUrl():
                try:
                    blob = fetch_url(self._downloads, spec.url, dict(spec.headers or {}),
                                     self.spool, spec.filename or filename_from_url(spec.url))
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
                outputs = [blob]
                log.debug("imported %s", public_url_form(spec.url))
            case ImportS3():
                try:
                    objects = read_s3(spec.access, spec.key, spec.key_prefix, self.spool)
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
                outputs = [
                    dataclasses.replace(blob, filename=spec.filename)
                    if spec.filename and spec.key else blob
                    for _key, blob in objects
                ]
            case Convert():
                outputs = [page for blob in files for page in self._convert(spec, blob,
                                                                             len(files))]
            case ExportS3():
                keys = export_keys(spec, [blob.filename for blob in files])
                for key, blob in zip(keys, files, strict=True):
                    self._export_s3(spec, key, blob)
                return [], [ResultFile(blob.filename, blob.size) for blob in files]
            case ImportAzureBlob():
                try:
                    objects = read_azure(self._downloads, self._azure_access(spec.access),
                                         spec.blob, spec.blob_prefix, self.spool)
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
                outputs = [
                    dataclasses.replace(blob, filename=spec.filename)
                    if spec.filename and spec.blob else blob
                    for _name, blob in objects
                ]
            case ExportAzureBlob():
                names = export_keys(spec, [blob.filename for blob in files])
                try:
                    for name, blob in zip(names, files, strict=True):
                        write_azure(self._downloads, self._azure_access(spec.access), name,
                                    blob, metadata=spec.metadata)
                except StorageError as exc:
                    raise TaskFailure(EXPORT_FAILED, str(exc)) from exc
                return [], [ResultFile(blob.filename, blob.size) for blob in files]
            case ExportGcs():
                names = export_keys(spec, [blob.filename for blob in files])
                try:
                    access = self._gcs_access(spec.access)
                    for name, blob in zip(names, files, strict=True):
                        write_gcs(self._downloads, access, name, blob)
                except StorageError as exc:
                    raise TaskFailure(EXPORT_FAILED, str(exc)) from exc
                return [], [ResultFile(blob.filename, blob.size) for blob in files]
            case ImportSftp() | ImportUpload():
                try:
                    outputs = (read_sftp(spec, self.spool) if isinstance(spec, ImportSftp)
                               else [self.uploads.wait(spec.slot)])
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
            case ExportSftp():
                try:
                    write_sftp(spec, files)
                except StorageError as exc:
                    raise TaskFailure(EXPORT_FAILED, str(exc)) from exc
                return [], [ResultFile(blob.filename, blob.size) for blob in files]
            case ExportUrl():
                base = self._public_url()
                named = [dataclasses.replace(blob, filename=_export_name(spec, blob.filename))
                         for blob in files]
                return [], [
                    ResultFile(blob.filename, blob.size, base + self.files.add(blob))
                    for blob in named
                ]
        return outputs, [ResultFile(blob.filename, blob.size) for blob in outputs]

    @staticmethod
    def _export_s3(spec: ExportS3, key: str, blob: FileBlob) -> None:
        options: dict[str, Any] = {
            "content_type": spec.content_type, "acl": spec.acl,
            "cache_control": spec.cache_control,
            "metadata": dict(spec.metadata) if spec.metadata else None,
            "server_side_encryption": spec.server_side_encryption, "tagging": spec.tagging,
        }
        try:
            if blob.path is None:
                write_s3(spec.access, key, blob.data, **options)
            else:
                with blob.open() as body:
                    write_s3(spec.access, key, body, **options)
        except StorageError as exc:
            raise TaskFailure(EXPORT_FAILED, str(exc)) from exc

    def _convert(self, spec: Convert, blob: FileBlob, count: int) -> list[FileBlob]:
        source = spec.input_format or extension(blob.filename)
        try:
            pages = convert_pages(blob.read(), source, spec.output_format, spec.options,
                                  split=spec.split_pages)
        except ConversionError as exc:
            raise TaskFailure(exc.code, f"{blob.filename}: {exc.message}") from exc
        name = output_filename(blob.filename, spec.output_format)
        if len(pages) > 1:  # CloudConvert numbers pages: scan-1.png, scan-2.png, ...
            stem, _, suffix = name.rpartition(".")
            return [self.spool.blob(f"{stem}-{number}.{suffix}", data)
                    for number, data in enumerate(pages, start=1)]
        # A custom filename only makes sense for a single output.
        custom = spec.filename if spec.filename and count == 1 else None
        return [self.spool.blob(custom or name, pages[0])]

    # -- callbacks ---------------------------------------------------------------------------

    def _start_delivery(self, job_id: str, callback: Callback) -> None:
        """Deliver `callback` with retries; counts as active (for wait_idle) until the last
        attempt or duplicate was sent or the delivery was given up."""
        faults = self.faults
        with self.lock:
            if faults.drop_callbacks:
                self._dropped.append((job_id, callback))
                return
            self._active += 1
        self._later(
            faults.callback_delay_seconds,
            lambda: self._attempt(job_id, callback, 1, faults.duplicate_callbacks),
        )

    def deliver_dropped(self) -> int:
        """Send every callback the drop fault kept back, as late deliveries; returns how
        many."""
        with self.lock:
            dropped, self._dropped = self._dropped, []
        for job_id, callback in dropped:
            self._start_delivery(job_id, callback)
        return len(dropped)

    def forget(self, job_id: str) -> bool:
        """Remove a job, as providers delete jobs some hours after they ended."""
        with self.lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return False
            if job.tag is not None:
                self._by_tag[job.tag] = [j for j in self._by_tag[job.tag] if j is not job]
            for task in job.tasks:
                self._tasks.pop(task.id, None)
            return True

    def _later(self, delay: float, step: Callable[[], None]) -> None:
        try:
            self._timers.call_later(delay, step)
        except RuntimeError:  # the pool was shut down: the sandbox is stopping
            self._finished_one()

    def _attempt(self, job_id: str, callback: Callback, attempt: int, duplicates: int) -> None:
        finished = True
        try:
            if self.stopping.is_set():
                return
            status = self._post(job_id, callback, attempt)
            timing = callback.timing
            attempts = timing.attempts if timing else self._callback_attempts
            if callback.retry(status) and attempt < attempts:
                finished = False
                self._later(
                    timing.retry_seconds if timing
                    else self._callback_backoff * 2 ** (attempt - 1),
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
                self._finished_one()

    def _post(self, job_id: str, callback: Callback, attempt: int) -> int | None:
        # Only scheme, host and path are logged: callback URLs may carry a per-job token.
        shown = public_url_form(callback.url)
        try:
            timeout = (callback.timing.timeout_seconds if callback.timing
                       else CALLBACK_TIMEOUT_SECONDS)
            response = self._callbacks.request(callback.method, callback.url,
                                               content=callback.body or None,
                                               headers=dict(callback.headers), timeout=timeout)
            status: int | None = response.status_code
            log.info("callback %s %s attempt %d -> %s", callback.event, shown, attempt, status)
        except httpx.HTTPError as exc:
            status = None
            log.info("callback %s %s attempt %d failed: %s", callback.event, shown, attempt,
                     type(exc).__name__)
        with self.lock:
            self._deliveries.append(Delivery(job_id, callback.event, status, attempt,
                                             callback.url))
        return status


def _export_name(spec: ExportUrl, filename: str) -> str:
    if spec.filename:
        return spec.filename
    if spec.guid_names:
        return f"{uuid.uuid4().hex}.{filename.rpartition('.')[2]}"
    return filename
