"""FreeConvert API v1: ``POST /process/jobs`` with a map of named tasks, unwrapped JSON answers,
and account-level webhooks signed with ``FreeConvert-Signature``.

FreeConvert's S3 tasks take no session token, so S3 sources are imported from a presigned URL
(``import/url``) and outputs come back through the relay (``export/url``). ``import/azureblob``
and ``export/azureblob`` take a ``sas_token``, so Azure blobs are read and written natively with
a SAS for the one blob. The GCS and SFTP tasks want service-account keys or passwords: relay.
Webhooks are set once per account, not per job: point one at
``<CONVBRIDGE_WEBHOOK_URL>/callbacks/freeconvert`` for ``job.success`` and ``job.failed`` (or
``job.finished``, read by the job's own status) and store its signing secret as
``signing_secret``. A job is finished only if none of its tasks ended without success
(``failed``, ``canceled``, ``deleted``, ``insufficiant_minute``). Relay outputs are exported
with the output's file name (``export/url`` names files by id otherwise), and every file an
export lists is collected. A conversion that may give several files (a paged input to a
one-page image format, ``may_give_several_files``) is exported without a ``filename``: it
would name every file alike, and several outputs land in the output folder under their own
names (``pipeline.output_keys``), here FreeConvert's ids. The job's ``tag`` carries the
signed context, which is how a webhook finds its way back to the rule that started the job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

from convbridge.budget import ProviderLimits
from convbridge.errors import CallbackError, ProviderError
from convbridge.model import (
    CallbackRequest,
    Grant,
    GrantKind,
    JobOutcome,
    JobSpec,
    OutputFile,
    output_metadata,
)
from convbridge.providers.base import (
    TaggedJobsProvider,
    native_task,
    parse_json_object,
    parse_size,
    parse_time,
)
from convbridge.providers.cloudconvert import may_give_several_files

SIGNATURE_HEADER = "FreeConvert-Signature"
IMPORT_TASK = "import-source"
CONVERT_TASK = "convert"
EXPORT_TASK = "export-output"
#: events that settle a job; ``job.created`` needs no action. The seed lists ``job.success``
#: and ``job.failed`` but registers webhooks for ``job.finished``, which is read by the job's
#: own status (None here)
FINAL_EVENTS: dict[str, str | None] = {"job.success": "finished", "job.failed": "failed",
                                       "job.finished": None}
#: the event a bare job document stands for, should a webhook body carry no ``event``
EVENT_FOR_STATUS = {"completed": "job.success", "failed": "job.failed"}
#: the task statuses that end a task without its result (seed: task status values, and
#: ``insufficiant_minute`` as the task listing spells it); any of them fails the job
FAILED_TASK_STATUSES = frozenset({"failed", "canceled", "deleted", "insufficiant_minute"})


class FreeConvert(TaggedJobsProvider):
    name: ClassVar[str] = "freeconvert"
    default_base_url: ClassVar[str | None] = "https://api.freeconvert.com/v1"
    native_imports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "s3": frozenset({"presigned_url"}),
        "azure_blob": frozenset({"sas", "presigned_url"}),
    }
    native_exports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "azure_blob": frozenset({"sas"}),
    }
    #: export/url results are served by the task's worker (``server301.freeconvert.com``)
    download_hosts: ClassVar[tuple[str, ...]] = ("*.freeconvert.com",)
    #: a conservative guess: the seed (000, "Rate Limits") documents 429 with Retry-After and
    #: X-RateLimit-Limit / -Remaining on "some endpoints", no numbers, and no job limit
    default_limits: ClassVar[ProviderLimits] = ProviderLimits(max_concurrent_jobs=5,
                                                              requests_per_second=5.0)
    #: a task's files are deleted 4 h after it was created (jobs after 24 h): ask in time to
    #: relay them
    settle_deadline_seconds: ClassVar[int] = 2 * 3600
    jobs_path: ClassVar[str] = "/process/jobs"
    listed_jobs_at: ClassVar[tuple[str, ...]] = ("docs",)

    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        convert: dict[str, Any] = {
            "operation": "convert",
            "input": IMPORT_TASK,
            "input_format": spec.conversion.input_format,
            "output_format": spec.conversion.output_format,
        }
        # FreeConvert keeps engine options in their own object, so none can rewire the job.
        if spec.conversion.options:
            convert["options"] = dict(spec.conversion.options)
        return {
            "tag": spec.context_token,
            "tasks": {
                IMPORT_TASK: _import_task(spec.read_grant, spec.filename),
                CONVERT_TASK: convert,
                EXPORT_TASK: _export_task(spec),
            },
        }

    def fetch_job(self, job_id: str) -> JobOutcome | None:
        job = self._job_document(f"/process/jobs/{quote(job_id, safe='')}",
                                 headers=self._auth())
        if not isinstance(job, dict) or job.get("id") != job_id:
            raise ProviderError(f"{self.name}: asked for job {job_id}, got another answer")
        event = EVENT_FOR_STATUS.get(str(job.get("status")))
        if event is None:
            return None
        try:
            return parse_job(job, event=event)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: job {job_id} is malformed") from exc

    def verify_callback(self, request: CallbackRequest) -> None:
        # PHP's hash_hmac('sha256', $payload, $secret) in the seed: lowercase hex
        self._verify_hmac_hex(request, SIGNATURE_HEADER)

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        document = parse_json_object(body, "a FreeConvert webhook")
        try:
            # {"event": ..., "job": {...}}; a bare job is read by its own status
            job = document.get("job", document)
            event = document.get("event") or EVENT_FOR_STATUS.get(job.get("status"))
            return parse_job(job, event=event) if event in FINAL_EVENTS else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CallbackError("callback body is not a FreeConvert webhook") from exc


def parse_job(job: Mapping[str, Any], *, event: str = "") -> JobOutcome:
    """A FreeConvert job (from a webhook or ``GET /process/jobs/{id}``) as a JobOutcome."""
    tasks = [t for t in job.get("tasks") or [] if isinstance(t, dict)]
    failed = [t for t in tasks if t.get("status") in FAILED_TASK_STATUSES]
    failed_ids = {str(t.get("id")) for t in failed}
    # the task that really failed: none of its inputs failed before it
    root = next((t for t in failed if not failed_ids & set(_dependencies(t))), None)
    root = root or (failed[0] if failed else None)
    # a failed or canceled task fails the job whatever the event says
    status = ("failed" if FINAL_EVENTS.get(event) == "failed" or failed
              or job.get("status") == "failed" else "finished")
    error = _error(root.get("result"), root) if root else _error(job.get("result"), job)
    outputs = [output for task in tasks
               if task.get("operation") == "export/url" and task.get("status") == "completed"
               for output in _result_files(task.get("result"))]
    return JobOutcome(
        provider=FreeConvert.name,
        job_id=str(job.get("id", "")),
        status="failed" if status == "failed" else "finished",
        context_token=job["tag"] if isinstance(job.get("tag"), str) else None,
        event=event,
        outputs=tuple(outputs),
        failed_task=str(root.get("name") or root.get("operation")) if root else None,
        code=error[0] if status == "failed" else None,
        message=error[1] if status == "failed" else None,
        started_at=parse_time(job.get("createdAt")),
        ended_at=parse_time(job.get("updatedAt")),
    )


def _dependencies(task: Mapping[str, Any]) -> list[str]:
    # ids, or whole tasks when the job was read with include=dependsOn
    found = task.get("dependsOn")
    return [str(d.get("id")) if isinstance(d, dict) else str(d)
            for d in (found if isinstance(found, list) else [])]


def _error(result: Any, holder: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(code, message): ``result.errorCode`` / ``result.msg``, else the holder's own
    ``code`` / ``message`` attributes, which the seed also names."""
    result = result if isinstance(result, dict) else {}
    code = result.get("errorCode") or holder.get("code")
    message = result.get("msg") or holder.get("message")
    return (str(code) if code else None,
            str(message).strip() if message else None)


def _result_files(result: Any) -> list[OutputFile]:
    """Every file an export/url task produced: ``result.url`` for one, ``result.files`` (each
    with its ``url``, and a ``filename`` and ``size`` where given) for several."""
    if not isinstance(result, dict):
        return []
    listed = result.get("files")
    entries = [f for f in listed if isinstance(f, dict)] if isinstance(listed, list) else []
    if not entries and result.get("url"):
        entries = [result]
    return [OutputFile(filename=str(f.get("filename") or _filename(str(f["url"]))),
                       size=parse_size(f.get("size")), url=str(f["url"]))
            for f in entries if f.get("url")]


def _filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _import_task(grant: Grant, filename: str) -> dict[str, Any]:
    if grant.kind == "presigned_url":  # any storage's signed URL
        return {"operation": "import/url", "url": grant.url, "filename": filename}
    return {**native_task(IMPORT_TASKS, grant, "freeconvert"), "filename": filename}


def _export_task(spec: JobSpec) -> dict[str, Any]:
    grant = spec.write_grant
    if spec.route == "relay" or grant is None:
        export = {"operation": "export/url", "input": CONVERT_TASK}
        if may_give_several_files(spec.conversion):
            return export  # each file keeps a name of its own (FreeConvert's id)
        # without a filename the download is named by FreeConvert's file id
        return {**export, "filename": spec.output.key.rsplit("/", 1)[-1]}
    return {**native_task(EXPORT_TASKS, grant, "freeconvert", spec), "input": CONVERT_TASK}


def _azure_blob_access(grant: Grant) -> dict[str, Any]:
    # the SAS is the only credential; storage_access_key is never sent
    return {"storage_account": grant.secret["account_name"],
            "container": grant.location.partition("/")[2],
            "sas_token": grant.secret["sas_token"]}


def _import_azure_blob(grant: Grant) -> dict[str, Any]:
    return {"operation": "import/azureblob", **_azure_blob_access(grant), "blob": grant.key}


def _export_azure_blob(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    metadata = output_metadata(spec.rule, spec.source, azure_names=True)
    return {"operation": "export/azureblob", **_azure_blob_access(grant),
            "blob": spec.output.key, "metadata": metadata}


#: (storage, grant kind) -> the task that imports with it natively
IMPORT_TASKS: dict[tuple[str, str], Callable[[Grant], dict[str, Any]]] = {
    ("azure_blob", "sas"): _import_azure_blob,
}
#: (storage, grant kind) -> the task that exports with it natively
EXPORT_TASKS: dict[tuple[str, str], Callable[[Grant, JobSpec], dict[str, Any]]] = {
    ("azure_blob", "sas"): _export_azure_blob,
}
