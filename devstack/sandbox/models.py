"""The sandbox's value types, independent of any provider dialect: requests and answers as the
HTTP front hands them over, the neutral operation specs a dialect builds from its own wire
format, jobs made of tasks as the job store keeps them, and callbacks as a dialect builds them
for the callback deliverer. State lives in jobs.py, execution in executor.py, delivery in
callbacks.py, fault injection in faults.py; backend.py puts them together."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol

from .azure_io import AzureAccess
from .gcs_io import GcsAccess
from .sftp_io import ExportSftp, ImportSftp, ImportUpload
from .storage_io import FileBlob, S3Access

Status = Literal["waiting", "processing", "finished", "error"]

IMPORT_FAILED = "IMPORT_FAILED"
EXPORT_FAILED = "EXPORT_FAILED"
INPUT_TASK_FAILED = "INPUT_TASK_FAILED"
SANDBOX_ERROR = "SANDBOX_ERROR"


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
    the sandbox's quick test schedule (callbacks.CALLBACK_TIMEOUT_SECONDS per attempt, exponential
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
