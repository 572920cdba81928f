"""The sandbox's executor: runs a job's tasks in dependency order on a small worker pool, each
by the handler its operation kind names in `OPERATIONS` ("import/url", "import/s3", "convert",
"export/s3", "export/azure/blob", ...), with the per-storage I/O modules (storage_io, azure_io,
gcs_io, sftp_io) and the converter behind them: real downloads, conversions and uploads with
exactly the grants given. When a job ends it asks the job's dialect for the callbacks and hands
them to the callback deliverer."""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .azure_io import AzureAccess, read_azure, write_azure
from .callbacks import CallbackDeliverer
from .convert import CONVERSION_FAILED, ConversionError, convert_pages, extension, output_filename
from .faults import FaultState
from .gcs_io import GcsAccess, write_gcs
from .models import (
    EXPORT_FAILED,
    IMPORT_FAILED,
    INPUT_TASK_FAILED,
    SANDBOX_ERROR,
    CallbackBuilder,
    Convert,
    ExportAzureBlob,
    ExportGcs,
    ExportS3,
    ExportUrl,
    ImportAzureBlob,
    ImportS3,
    ImportUrl,
    Job,
    ResultFile,
    Status,
    Task,
    TaskFailure,
    export_keys,
    now,
    order_by_dependencies,
)
from .sftp_io import ExportSftp, ImportSftp, ImportUpload, Uploads, read_sftp, write_sftp
from .storage_io import (
    FileBlob,
    FileStore,
    Spool,
    StorageError,
    download_client,
    fetch_url,
    filename_from_url,
    public_url_form,
    read_s3,
    write_s3,
)
from .workers import Activity, Pool

log = logging.getLogger("devstack.sandbox")

#: a task's files for the tasks that take it as input, and its result files as shown
Produced = tuple[list[FileBlob], list[ResultFile]]


@dataclass(frozen=True)
class OperationHandler:
    """How one operation kind runs: `run(executor, spec, input files)`, and the error code
    its tasks fail with (a StorageError from `run`, or the fail_operations fault)."""

    run: Callable[[Executor, Any, list[FileBlob]], Produced]
    failure_code: str


class Executor:
    """Runs jobs on its own pool; each running job counts in `activity` until it ended and
    its callbacks were handed to the deliverer."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        activity: Activity,
        faults: FaultState,
        files: FileStore,
        public_url: Callable[[], str],
        deliverer: CallbackDeliverer,
        workers: int = 4,
    ) -> None:
        self._lock = lock
        self._activity = activity
        self._faults = faults
        self.files = files
        self.public_url = public_url
        self._deliverer = deliverer
        self.spool = Spool()
        self.uploads = Uploads(self.spool)
        self._pool = Pool(workers, "sandbox-job")
        # Shared: building a client costs ~15 ms.
        self.downloads = download_client()
        # Azure storage account name -> blob endpoint (the offline stand-in for DNS)
        self._azure_endpoints: dict[str, str] = {}
        # where GCS tasks reach storage.googleapis.com (an emulator such as fake-gcs-server)
        self._gcs_endpoint: str | None = None

    # -- storage endpoints -------------------------------------------------------------------

    def set_azure_endpoint(self, account: str, endpoint: str) -> None:
        with self._lock:
            self._azure_endpoints[account] = endpoint

    def azure_access(self, access: AzureAccess) -> AzureAccess:
        with self._lock:
            endpoint = self._azure_endpoints.get(access.account)
        if endpoint is None:
            raise StorageError(f"storage account {access.account!r} is unknown to the sandbox "
                               "(Sandbox.set_azure_endpoint maps accounts to endpoints)")
        return dataclasses.replace(access, endpoint=endpoint)

    def set_gcs_endpoint(self, endpoint: str | None) -> None:
        with self._lock:
            self._gcs_endpoint = endpoint

    def gcs_access(self, access: GcsAccess) -> GcsAccess:
        with self._lock:
            endpoint = self._gcs_endpoint
        if endpoint is None:
            raise StorageError("Cloud Storage is unreachable from the sandbox "
                               "(Sandbox.set_gcs_endpoint points GCS tasks at an emulator)")
        return dataclasses.replace(access, endpoint=endpoint)

    # -- jobs --------------------------------------------------------------------------------

    def run(self, job: Job, build_callback: CallbackBuilder) -> None:
        """Execute `job` on the worker pool; `build_callback` is asked for the callback
        once the job has ended."""
        self._activity.begin()
        try:
            self._pool.submit(lambda: self._run_job(job, build_callback))
        except RuntimeError:  # the pool was shut down: the sandbox is stopping
            self._activity.end()

    def close(self) -> None:
        """Drop queued jobs (running ones end on their own) and remove spilled files."""
        self._pool.shutdown()
        self.spool.close()

    def _run_job(self, job: Job, build_callback: CallbackBuilder) -> None:
        try:
            with self._lock:
                job.status, job.started_at = "processing", now()
            by_id = {task.id: task for task in job.tasks}
            order = order_by_dependencies({t.id: t.input_ids for t in job.tasks})
            for task in (by_id[task_id] for task_id in order):
                self._run_task(task, [by_id[i] for i in task.input_ids])
            with self._lock:
                failed = any(task.status == "error" for task in job.tasks)
                job.status, job.ended_at = ("error" if failed else "finished"), now()
            log.info("job %s %s", job.id, job.status)
            self._release_outputs(job)
            with self._lock:
                built = build_callback(job)
            self._deliverer.deliver(job.id, built)
        except Exception:
            log.exception("sandbox job %s crashed", job.id)
        finally:
            self._activity.end()

    def _release_outputs(self, job: Job) -> None:
        """Intermediate files are needed only while the job runs; spilled ones that no
        export/url serves are deleted now rather than at stop."""
        with self._lock:
            blobs = [blob for task in job.tasks for blob in task.outputs]
            for task in job.tasks:
                task.outputs = []
        for blob in blobs:
            if blob.path is not None and not self.files.serves(blob.path):
                self.spool.discard(blob)

    def _run_task(self, task: Task, inputs: list[Task]) -> None:
        with self._lock:
            task.status, task.started_at = "processing", now()
        failed_inputs = [t.name for t in inputs if t.status != "finished"]
        try:
            operation = OPERATIONS[task.spec.kind]
            if failed_inputs:
                raise TaskFailure(
                    INPUT_TASK_FAILED, f"Input task {', '.join(failed_inputs)} failed"
                )
            if task.spec.kind in self._faults.faults.fail_operations:
                raise TaskFailure(
                    operation.failure_code, "Forced failure (sandbox fault injection)"
                )
            files = [blob for t in inputs for blob in t.outputs]
            try:
                outputs, results = operation.run(self, task.spec, files)
            except StorageError as exc:
                raise TaskFailure(operation.failure_code, str(exc)) from exc
        except TaskFailure as exc:
            outcome: tuple[Status, str | None, str | None] = ("error", exc.code, exc.message)
            outputs, results = [], None
        except Exception as exc:
            log.exception("task %s (%s) crashed", task.id, task.operation)
            outcome = ("error", SANDBOX_ERROR, f"{type(exc).__name__}: {exc}")
            outputs, results = [], None
        else:
            outcome = ("finished", None, None)
        with self._lock:
            task.status, task.code, task.message = outcome
            task.outputs, task.result_files, task.ended_at = outputs, results, now()
        if task.status == "error":
            log.info("task %s (%s) failed: %s %s", task.id, task.operation, task.code,
                     task.message)


# -- operations: one handler per kind -----------------------------------------------------------


def _passed_on(outputs: list[FileBlob]) -> Produced:
    """An import's or conversion's files: handed to the next tasks and shown as results."""
    return outputs, [ResultFile(blob.filename, blob.size) for blob in outputs]


def _exported(files: list[FileBlob]) -> Produced:
    """An export's files: nothing for later tasks, each shown as a result."""
    return [], [ResultFile(blob.filename, blob.size) for blob in files]


def _import_url(ex: Executor, spec: ImportUrl, _files: list[FileBlob]) -> Produced:
    blob = fetch_url(ex.downloads, spec.url, dict(spec.headers or {}), ex.spool,
                     spec.filename or filename_from_url(spec.url))
    log.debug("imported %s", public_url_form(spec.url))
    return _passed_on([blob])


def _import_s3(ex: Executor, spec: ImportS3, _files: list[FileBlob]) -> Produced:
    objects = read_s3(spec.access, spec.key, spec.key_prefix, ex.spool)
    return _passed_on([
        dataclasses.replace(blob, filename=spec.filename) if spec.filename and spec.key else blob
        for _key, blob in objects
    ])


def _import_azure_blob(ex: Executor, spec: ImportAzureBlob, _files: list[FileBlob]) -> Produced:
    objects = read_azure(ex.downloads, ex.azure_access(spec.access), spec.blob,
                         spec.blob_prefix, ex.spool)
    return _passed_on([
        dataclasses.replace(blob, filename=spec.filename) if spec.filename and spec.blob
        else blob
        for _name, blob in objects
    ])


def _import_sftp(ex: Executor, spec: ImportSftp, _files: list[FileBlob]) -> Produced:
    return _passed_on(read_sftp(spec, ex.spool))


def _import_upload(ex: Executor, spec: ImportUpload, _files: list[FileBlob]) -> Produced:
    return _passed_on([ex.uploads.wait(spec.slot)])


def _convert(ex: Executor, spec: Convert, files: list[FileBlob]) -> Produced:
    return _passed_on([page for blob in files
                       for page in _convert_one(ex.spool, spec, blob, len(files))])


def _convert_one(spool: Spool, spec: Convert, blob: FileBlob, count: int) -> list[FileBlob]:
    source = spec.input_format or extension(blob.filename)
    try:
        pages = convert_pages(blob.read(), source, spec.output_format, spec.options,
                              split=spec.split_pages)
    except ConversionError as exc:
        raise TaskFailure(exc.code, f"{blob.filename}: {exc.message}") from exc
    name = output_filename(blob.filename, spec.output_format)
    if len(pages) > 1:  # CloudConvert numbers pages: scan-1.png, scan-2.png, ...
        stem, _, suffix = name.rpartition(".")
        return [spool.blob(f"{stem}-{number}.{suffix}", data)
                for number, data in enumerate(pages, start=1)]
    # A custom filename only makes sense for a single output.
    custom = spec.filename if spec.filename and count == 1 else None
    return [spool.blob(custom or name, pages[0])]


def _export_s3(_ex: Executor, spec: ExportS3, files: list[FileBlob]) -> Produced:
    keys = export_keys(spec, [blob.filename for blob in files])
    options: dict[str, Any] = {
        "content_type": spec.content_type, "acl": spec.acl,
        "cache_control": spec.cache_control,
        "metadata": dict(spec.metadata) if spec.metadata else None,
        "server_side_encryption": spec.server_side_encryption, "tagging": spec.tagging,
    }
    for key, blob in zip(keys, files, strict=True):
        if blob.path is None:
            write_s3(spec.access, key, blob.data, **options)
        else:
            with blob.open() as body:
                write_s3(spec.access, key, body, **options)
    return _exported(files)


def _export_azure_blob(ex: Executor, spec: ExportAzureBlob, files: list[FileBlob]) -> Produced:
    names = export_keys(spec, [blob.filename for blob in files])
    for name, blob in zip(names, files, strict=True):
        write_azure(ex.downloads, ex.azure_access(spec.access), name, blob,
                    metadata=spec.metadata)
    return _exported(files)


def _export_gcs(ex: Executor, spec: ExportGcs, files: list[FileBlob]) -> Produced:
    names = export_keys(spec, [blob.filename for blob in files])
    access = ex.gcs_access(spec.access)
    for name, blob in zip(names, files, strict=True):
        write_gcs(ex.downloads, access, name, blob)
    return _exported(files)


def _export_sftp(_ex: Executor, spec: ExportSftp, files: list[FileBlob]) -> Produced:
    write_sftp(spec, files)
    return _exported(files)


def _export_url(ex: Executor, spec: ExportUrl, files: list[FileBlob]) -> Produced:
    base = ex.public_url()
    named = [dataclasses.replace(blob, filename=_export_name(spec, blob.filename))
             for blob in files]
    return [], [ResultFile(blob.filename, blob.size, base + ex.files.add(blob))
                for blob in named]


def _export_name(spec: ExportUrl, filename: str) -> str:
    if spec.filename:
        return spec.filename
    if spec.guid_names:
        return f"{uuid.uuid4().hex}.{filename.rpartition('.')[2]}"
    return filename


#: operation kind (the neutral specs' `kind`) -> how its tasks run
OPERATIONS: dict[str, OperationHandler] = {
    ImportUrl.kind: OperationHandler(_import_url, IMPORT_FAILED),
    ImportS3.kind: OperationHandler(_import_s3, IMPORT_FAILED),
    ImportAzureBlob.kind: OperationHandler(_import_azure_blob, IMPORT_FAILED),
    ImportSftp.kind: OperationHandler(_import_sftp, IMPORT_FAILED),
    ImportUpload.kind: OperationHandler(_import_upload, IMPORT_FAILED),
    Convert.kind: OperationHandler(_convert, CONVERSION_FAILED),
    ExportS3.kind: OperationHandler(_export_s3, EXPORT_FAILED),
    ExportUrl.kind: OperationHandler(_export_url, EXPORT_FAILED),
    ExportAzureBlob.kind: OperationHandler(_export_azure_blob, EXPORT_FAILED),
    ExportGcs.kind: OperationHandler(_export_gcs, EXPORT_FAILED),
    ExportSftp.kind: OperationHandler(_export_sftp, EXPORT_FAILED),
}
