"""State and execution for the sandbox, independent of any provider dialect: jobs made of tasks,
run in dependency order on a background thread per job, with real downloads, conversions and
uploads, followed by callback delivery with retries. A dialect module (cloudconvert_v2.py and its
future siblings) translates its wire format into the neutral operation specs defined here, renders
jobs back into its own JSON, and builds the signed callback body; everything else lives here so
that every dialect behaves alike. Fault injection (`Faults`) is configured here for the same
reason."""

from __future__ import annotations

import logging
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

import httpx

from .convert import (
    CONVERSION_FAILED,
    ConversionError,
    convert_image,
    extension,
    output_filename,
)
from .storage_io import (
    FileBlob,
    FileStore,
    S3Access,
    StorageError,
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
    """Fault injection; the defaults mean a well-behaved provider.

    latency_seconds: added before every API answer.
    fail_rate_429 / fail_rate_503: share (0..1) of job creations refused with that status and
        `Retry-After: retry_after_seconds`.
    fail_operations: neutral operation kinds ("import/s3", "convert", ...) whose tasks always
        fail, with that operation's usual error code.
    duplicate_callbacks: extra copies of a callback sent after it was accepted.
    callback_delay_seconds: wait before the first delivery attempt.
    seed: makes the random draws repeatable."""

    latency_seconds: float = 0.0
    fail_rate_429: float = 0.0
    fail_rate_503: float = 0.0
    retry_after_seconds: int = 1
    fail_operations: frozenset[str] = frozenset()
    duplicate_callbacks: int = 0
    callback_delay_seconds: float = 0.0
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
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


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
    kind: ClassVar[str] = "export/url"


Operation = ImportUrl | ImportS3 | Convert | ExportS3 | ExportUrl

_FAILURE_CODE = {
    "import/url": IMPORT_FAILED,
    "import/s3": IMPORT_FAILED,
    "convert": CONVERSION_FAILED,
    "export/s3": EXPORT_FAILED,
    "export/url": EXPORT_FAILED,
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
class Callback:
    """One callback, ready to send: the dialect signs `body` and decides which answers
    are worth retrying (`retry(status)`, status None for a network error)."""

    url: str
    event: str
    body: bytes
    headers: Mapping[str, str]
    retry: Callable[[int | None], bool]


@dataclass(frozen=True)
class Delivery:
    job_id: str
    event: str
    status: int | None
    attempt: int


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


def export_keys(spec: ExportS3, filenames: list[str]) -> list[str]:
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
    ) -> None:
        self.faults = faults
        self.files = files
        self._public_url = public_url
        self._callback_attempts = max(1, callback_attempts)
        self._callback_backoff = callback_backoff_seconds
        self._rng = random.Random(faults.seed)
        # Re-entrant: dialects render a job while holding it, and rendering may look up tasks.
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        self._active = 0
        self._stopping = threading.Event()
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, Task] = {}
        self._deliveries: list[Delivery] = []

    # -- fault draws -------------------------------------------------------------------------

    def draw_rejection(self) -> int | None:
        """429 or 503 for the configured share of job creations, else None."""
        with self.lock:
            roll = self._rng.random()
        if roll < self.faults.fail_rate_429:
            return 429
        if roll < self.faults.fail_rate_429 + self.faults.fail_rate_503:
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
            self._tasks.update({task.id: task for task in tasks})
        return job

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self._jobs.get(job_id)

    def task(self, task_id: str) -> Task | None:
        with self.lock:
            return self._tasks.get(task_id)

    def jobs(self, dialect: str) -> list[Job]:
        with self.lock:
            return [job for job in self._jobs.values() if job.dialect == dialect]

    def deliveries(self) -> list[Delivery]:
        with self.lock:
            return list(self._deliveries)

    # -- execution ---------------------------------------------------------------------------

    def run(self, job: Job, build_callback: Callable[[Job], Callback | None]) -> None:
        """Execute `job` in the background; `build_callback` is asked for the callback
        once the job has ended."""
        with self.lock:
            self._active += 1
        thread = threading.Thread(
            target=self._run_job, args=(job, build_callback), name=f"sandbox-job-{job.id[:8]}",
            daemon=True,
        )
        thread.start()

    def wait_idle(self, timeout: float) -> None:
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout=timeout):
                raise TimeoutError(f"{self._active} sandbox job(s) still running after {timeout}s")

    def close(self) -> None:
        """Cut short every wait (backoffs, injected delays) so threads end promptly."""
        self._stopping.set()

    def _run_job(self, job: Job, build_callback: Callable[[Job], Callback | None]) -> None:
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
            with self.lock:
                callback = build_callback(job)
            if callback is not None:
                self._deliver(job.id, callback)
        except Exception:
            log.exception("sandbox job %s crashed", job.id)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

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
                    data = fetch_url(spec.url, dict(spec.headers or {}))
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
                outputs = [FileBlob(spec.filename or filename_from_url(spec.url), data)]
                log.debug("imported %s", public_url_form(spec.url))
            case ImportS3():
                try:
                    objects = read_s3(spec.access, spec.key, spec.key_prefix)
                except StorageError as exc:
                    raise TaskFailure(IMPORT_FAILED, str(exc)) from exc
                outputs = [
                    FileBlob(
                        spec.filename if spec.filename and spec.key else key.rsplit("/", 1)[-1],
                        data,
                    )
                    for key, data in objects
                ]
            case Convert():
                outputs = [self._convert(spec, blob, len(files)) for blob in files]
            case ExportS3():
                keys = export_keys(spec, [blob.filename for blob in files])
                for key, blob in zip(keys, files, strict=True):
                    try:
                        write_s3(
                            spec.access, key, blob.data,
                            content_type=spec.content_type, acl=spec.acl,
                            cache_control=spec.cache_control,
                            metadata=dict(spec.metadata) if spec.metadata else None,
                            server_side_encryption=spec.server_side_encryption,
                            tagging=spec.tagging,
                        )
                    except StorageError as exc:
                        raise TaskFailure(EXPORT_FAILED, str(exc)) from exc
                return [], [ResultFile(blob.filename, len(blob.data)) for blob in files]
            case ExportUrl():
                base = self._public_url()
                return [], [
                    ResultFile(blob.filename, len(blob.data), base + self.files.add(blob))
                    for blob in files
                ]
        return outputs, [ResultFile(blob.filename, len(blob.data)) for blob in outputs]

    @staticmethod
    def _convert(spec: Convert, blob: FileBlob, count: int) -> FileBlob:
        source = spec.input_format or extension(blob.filename)
        try:
            data = convert_image(blob.data, source, spec.output_format, spec.options)
        except ConversionError as exc:
            raise TaskFailure(exc.code, f"{blob.filename}: {exc.message}") from exc
        # A custom filename only makes sense for a single output.
        name = spec.filename if spec.filename and count == 1 else None
        return FileBlob(name or output_filename(blob.filename, spec.output_format), data)

    # -- callbacks ---------------------------------------------------------------------------

    def _deliver(self, job_id: str, callback: Callback) -> None:
        if self.faults.callback_delay_seconds and self._stopping.wait(
            self.faults.callback_delay_seconds
        ):
            return
        attempt = 0
        status: int | None = None
        with httpx.Client(timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False) as client:
            for attempt in range(1, self._callback_attempts + 1):
                status = self._post(client, job_id, callback, attempt)
                if not callback.retry(status) or attempt == self._callback_attempts:
                    break
                if self._stopping.wait(self._callback_backoff * 2 ** (attempt - 1)):
                    return
            if status is not None and 200 <= status < 300:
                for extra in range(1, self.faults.duplicate_callbacks + 1):
                    self._post(client, job_id, callback, attempt + extra)

    def _post(
        self, client: httpx.Client, job_id: str, callback: Callback, attempt: int
    ) -> int | None:
        # Only scheme, host and path are logged: callback URLs may carry a per-job token.
        shown = public_url_form(callback.url)
        try:
            response = client.post(callback.url, content=callback.body,
                                   headers=dict(callback.headers))
            status: int | None = response.status_code
            log.info("callback %s %s attempt %d -> %s", callback.event, shown, attempt, status)
        except httpx.HTTPError as exc:
            status = None
            log.info("callback %s %s attempt %d failed: %s", callback.event, shown, attempt,
                     type(exc).__name__)
        with self.lock:
            self._deliveries.append(Delivery(job_id, callback.event, status, attempt))
        return status
