"""CloudConvert API v2: jobs of named tasks, ``{"data": ...}`` envelopes, signed webhooks.

Native routes: ``import/s3`` and ``export/s3`` take an STS ``session_token``, so S3 objects
are read and written by CloudConvert with credentials scoped to the one object and the job's
output key; ``import/azure/blob`` takes a ``sas_token`` scoped to the one blob. Anything else
imports from a presigned URL (``import/url``) and exports to CloudConvert's own download URL
(``export/url``) for the relay.

Azure outputs are always relayed. ``export/azure/blob`` has no ``metadata`` field (no official
SDK lists one), so a blob CloudConvert wrote would carry neither the loop-guard marker nor the
``convbridge-source`` tag. The marker alone would not be missed, since the rule's output prefix
is guarded too; the tag would: the create-only SAS cannot replace the blob when its source is
uploaded again, the relay then takes over, finds an output not tagged with this source and
refuses it (``OUTPUT_COLLISION``), so a new version would never be converted. The relay tags
every blob it writes, and ``export/url`` is what CloudConvert does honour. SFTP files, which have no
signed URLs, are pushed by the bridge into an ``import/upload`` task (a multipart form post
once the job exists); only rules that opt in hand CloudConvert the dedicated SFTP account for
``import/sftp`` and ``export/sftp``, and the dedicated GCS export key for
``export/google-cloud-storage`` (GCS has no narrower credential CloudConvert takes; the task
sets no metadata, so the rule's output prefix is what keeps the output from starting a job).

The API key needs the ``task.read`` and ``task.write`` scopes (REQUIRED_SCOPES); a request the
key lacks the scope for fails with ``API_KEY_SCOPE`` naming the scope.

Webhooks: the documented one is the account's, made in the dashboard for ``job.finished`` and
``job.failed`` with its own signing secret, which goes into ``signing_secret``. Every job also
names the same callback route as its ``webhook_url`` (it carries no secret and works whenever
CloudConvert signs it with that same secret, as the sandbox does by default); which secret
signs a per-job URL is not documented, and a callback signed with another is refused (401,
not retried), the dashboard's settling the job. Either way the job's ``tag`` is the bridge's
signed context, so the account webhook's callbacks for jobs other applications made are
refused too, with a 4xx: never 410, which would disable the webhook.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from convbridge.budget import ProviderLimits
from convbridge.errors import (
    CallbackError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    StorageError,
)
from convbridge.http import GaveUp, send
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    GrantKind,
    JobOutcome,
    JobSpec,
    OutputFile,
    output_metadata,
)
from convbridge.providers.base import (
    JobsRequest,
    TaggedJobsProvider,
    native_task,
    parse_json_object,
    parse_size,
    parse_time,
)

SIGNATURE_HEADER = "CloudConvert-Signature"
IMPORT_TASK = "import-source"
CONVERT_TASK = "convert"
EXPORT_TASK = "export-output"
#: events that settle a job; ``job.created`` and task events need no action
FINAL_EVENTS = {"job.finished": "finished", "job.failed": "failed"}
#: The API key scopes the bridge needs (seed 003): task.write creates jobs, task.read finds a
#: job whose create answer was lost and reads the upload form of SFTP inputs.
REQUIRED_SCOPES = ("task.read", "task.write")
#: the scope each request of the tagged-jobs flow needs, and what it is doing
JOBS_REQUEST_SCOPES: dict[JobsRequest, tuple[str, str]] = {
    "create": ("task.write", "creating a job"),
    "find": ("task.read", "finding a job whose create answer was lost"),
}
#: inputs CloudConvert may turn into one image per page
PAGED_INPUTS = frozenset({"pdf", "tif", "tiff", "gif", "webp", "ps", "eps", "ai", "psd", "xps",
                          "djvu", "doc", "docx", "odt", "rtf", "ppt", "pptx", "odp", "xls",
                          "xlsx", "ods"})
#: image formats that hold one page, so a paged input becomes several files
ONE_PAGE_OUTPUTS = frozenset({"png", "jpg", "jpeg", "bmp", "svg", "ico", "webp", "avif",
                              "heic"})


class CloudConvert(TaggedJobsProvider):
    name: ClassVar[str] = "cloudconvert"
    default_base_url: ClassVar[str | None] = "https://api.cloudconvert.com/v2"
    takes_uploads: ClassVar[bool] = True
    native_imports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "s3": frozenset({"presigned_url", "sts_session"}),
        "sftp": frozenset({"sftp_account"}),
        "azure_blob": frozenset({"sas", "presigned_url"}),
    }
    native_exports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "s3": frozenset({"sts_session"}),
        "sftp": frozenset({"sftp_account"}),
        # no azure_blob: relayed, see the module docstring
        # gcs only for rules with hand_over_account: true (see convbridge.planner)
        "gcs": frozenset({"gcs_service_account"}),
    }
    #: export/url files come from storage.cloudconvert.com; regional and sandbox hosts are
    #: below the same domain
    download_hosts: ClassVar[tuple[str, ...]] = ("*.cloudconvert.com",)
    #: "too many jobs at once" has been seen as 402 (DESIGN.md, provider facts); a 402 for
    #: exhausted credits is deferred too, and becomes a failure report only once the event's
    #: deferral budget is spent
    busy_statuses: ClassVar[frozenset[int]] = frozenset({402, 429})
    #: a conservative guess: the seeds (003 overview, 004 import tasks) give no limits;
    #: CloudConvert's smaller plans run a handful of jobs at once (402 "too many jobs at once"
    #: beyond) and the API answers 429 with X-RateLimit-* headers above its rate (DESIGN.md)
    default_limits: ClassVar[ProviderLimits] = ProviderLimits(max_concurrent_jobs=5,
                                                              requests_per_second=10.0)
    #: export/url files and the job itself are kept for 24 h; webhook retries end long before
    settle_deadline_seconds: ClassVar[int] = 6 * 3600
    created_id_at: ClassVar[tuple[str, ...]] = ("data", "id")
    listed_jobs_at: ClassVar[tuple[str, ...]] = ("data",)
    tag_parameter: ClassVar[str] = "filter[tag]"

    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        convert: dict[str, Any] = {
            "operation": "convert",
            "input": IMPORT_TASK,
            "input_format": spec.conversion.input_format,
            "output_format": spec.conversion.output_format,
        }
        # CloudConvert takes engine options as top-level task fields; ours never override the
        # wiring fields above.
        for option, value in spec.conversion.options.items():
            convert.setdefault(option, value)
        return {
            "tasks": {
                IMPORT_TASK: _import_task(spec.read_grant, spec.filename),
                CONVERT_TASK: convert,
                EXPORT_TASK: _export_task(spec),
            },
            "tag": spec.context_token,
            "webhook_url": spec.webhook_url,
        }

    def fetch_job(self, job_id: str) -> JobOutcome | None:
        document = self._job_document(f"/jobs/{quote(job_id, safe='')}", headers=self._auth())
        job = document.get("data") if isinstance(document, dict) else None
        if not isinstance(job, dict) or job.get("id") != job_id:
            raise ProviderError(f"{self.name}: asked for job {job_id}, got another answer")
        if job.get("status") not in {"finished", "error"}:
            return None
        try:
            return parse_job(job, provider=self.name)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderError(f"{self.name}: job {job_id} is malformed") from exc

    def upload_input(self, job_id: str, spec: JobSpec,
                     open_stream: Callable[[], Iterator[bytes]]) -> None:
        """Post the input to the form of the job's ``import/upload`` task: its parameters as
        given, the file last, streamed with a known length (no credential of ours goes)."""
        response = self._scoped("task.read", "reading the upload form of an input the bridge "
                                "uploads", "GET", f"/jobs/{job_id}")
        try:
            task = next(t for t in response.json()["data"]["tasks"]
                        if t.get("name") == IMPORT_TASK and t.get("operation") == "import/upload")
            form = task["result"]["form"]
            url, parameters = str(form["url"]), dict(form["parameters"])
        except (ValueError, KeyError, TypeError, StopIteration) as exc:
            raise ProviderError(f"{self.name}: job {job_id} has no upload form") from exc
        if spec.source.size is None:
            raise ProviderError(f"{self.name}: the size of {spec.source} is unknown")
        body = _UploadForm(parameters, spec.filename, spec.source.size, open_stream)
        try:
            answer = send(self._http, "POST", url, idempotent=False, content=body,
                          headers={"Content-Type": body.content_type,
                                   "Content-Length": str(body.length)})
        except GaveUp as exc:
            raise ProviderUnavailable(f"{self.name}: upload: {exc}") from exc
        if answer.status_code >= 500:
            raise ProviderUnavailable(f"{self.name}: upload answered {answer.status_code}",
                                      status=answer.status_code)
        if answer.status_code >= 400:
            raise ProviderRejected(f"{self.name}: upload refused: {answer.text[:300]}",
                                   status=answer.status_code, code="UPLOAD_REFUSED")

    def _jobs_request(self, purpose: JobsRequest, method: str, **kwargs: Any) -> httpx.Response:
        scope, doing = JOBS_REQUEST_SCOPES[purpose]
        return self._scoped(scope, doing, method, self.jobs_path, **kwargs)

    def _scoped(self, scope: str, doing: str, method: str, path: str,
                **kwargs: Any) -> httpx.Response:
        """An API request that needs ``scope``: CloudConvert answers 403 to a key without it,
        which is a setup mistake to name, not a provider failure to pass on."""
        try:
            return self._send(method, path, headers=self._auth(), **kwargs)
        except ProviderRejected as exc:
            if exc.status != 403:
                raise
            raise ProviderRejected(
                f"{self.name}: the API key was refused {doing} (HTTP 403): it needs the "
                f"{scope} scope; create a key with {' and '.join(REQUIRED_SCOPES)}",
                status=403, code="API_KEY_SCOPE") from exc

    def verify_callback(self, request: CallbackRequest) -> None:
        self._verify_hmac_hex(request, SIGNATURE_HEADER)

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        document = parse_json_object(body, "a CloudConvert webhook")
        event, job = document.get("event"), document.get("job")
        if not isinstance(event, str) or not isinstance(job, dict):
            raise CallbackError("callback body is not a CloudConvert webhook")
        if event not in FINAL_EVENTS:
            return None
        if not isinstance(job.get("tag"), str | None):
            raise CallbackError("callback job's tag is not a string")
        try:
            return parse_job(job, event=event, provider=self.name)
        except (AttributeError, TypeError, ValueError) as exc:  # a field of the wrong type
            raise CallbackError("callback job is not a CloudConvert job") from exc


def parse_job(job: Mapping[str, Any], *, event: str = "", provider: str = "cloudconvert"
              ) -> JobOutcome:
    """A CloudConvert job object (from a webhook or ``GET /v2/jobs/{id}``) as a JobOutcome of
    ``provider``: the adapter's name, which a subclass speaking this dialect changes."""
    tasks = job.get("tasks") or []
    failed = [t for t in tasks if t.get("status") == "error"]
    # the task that really failed, not the ones that failed because their input did
    root = next((t for t in failed if t.get("code") != "INPUT_TASK_FAILED"), None)
    root = root or (failed[0] if failed else None)
    status = "failed" if failed or job.get("status") == "error" else "finished"
    if event in FINAL_EVENTS:
        status = FINAL_EVENTS[event]
    outputs: list[OutputFile] = []
    for task in tasks:
        exported = str(task.get("operation", "")).startswith("export/")
        if exported and task.get("status") == "finished":
            for file in (task.get("result") or {}).get("files") or []:
                outputs.append(OutputFile(filename=str(file.get("filename", "")),
                                          size=parse_size(file.get("size")), url=file.get("url")))
    return JobOutcome(
        provider=provider,
        job_id=str(job.get("id", "")),
        status="failed" if status == "failed" else "finished",
        context_token=job.get("tag"),
        event=event,
        outputs=tuple(outputs),
        failed_task=(root.get("name") or root.get("operation")) if root else None,
        code=root.get("code") if root else None,
        message=root.get("message") if root else None,
        started_at=parse_time(job.get("started_at")),
        ended_at=parse_time(job.get("ended_at")),
    )


def _import_task(grant: Grant, filename: str) -> dict[str, Any]:
    if grant.kind == "presigned_url":  # any storage's signed URL
        return {"operation": "import/url", "url": grant.url, "filename": filename}
    if grant.kind == "upload":  # the bridge posts the file once the job exists
        return {"operation": "import/upload"}
    return {**native_task(IMPORT_TASKS, grant, "cloudconvert"), "filename": filename}


def _export_task(spec: JobSpec) -> dict[str, Any]:
    grant = spec.write_grant
    if spec.route == "relay" or grant is None:
        return {"operation": "export/url", "input": CONVERT_TASK}
    return {**native_task(EXPORT_TASKS, grant, "cloudconvert", spec), "input": CONVERT_TASK}


def _import_s3(grant: Grant) -> dict[str, Any]:
    task = {"operation": "import/s3", "bucket": grant.location, "region": grant.region,
            "key": grant.key, **_s3_credentials(grant)}
    if grant.endpoint:
        task["endpoint"] = grant.endpoint
    return task


def may_give_several_files(conversion: ConversionSpec) -> bool:
    """Whether CloudConvert may make one file per page: a paged input (a document, a
    multi-page TIFF, an animated GIF) converted to an image format that holds one page."""
    return (conversion.input_format.lower() in PAGED_INPUTS
            and conversion.output_format.lower() in ONE_PAGE_OUTPUTS)


def _export_s3(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    """One file goes to the output key. A conversion that may give several cannot know how
    many before it runs, and ``key`` without a placeholder names one object only; a ``%d`` in
    ``key`` would number the files apart from the names CloudConvert reports for them. So it
    exports with ``key_prefix`` the output folder, where each file lands under the name its
    result reports (``<output key>/scan-1.png``): exactly the keys the bridge collects for
    several outputs (``pipeline.output_keys``). A single file made that way is moved to the
    output key when the job settles (``pipeline.settle._collect_outputs``), so the naming scheme is
    the same whichever way the provider exported. The write grant covers both places."""
    place = ({"key_prefix": f"{spec.output.key}/"} if may_give_several_files(spec.conversion)
             else {"key": spec.output.key})
    task = {"operation": "export/s3", "bucket": grant.location, "region": grant.region,
            **place, "metadata": output_metadata(spec.rule, spec.source),
            **_s3_credentials(grant)}
    if grant.endpoint:
        task["endpoint"] = grant.endpoint
    return task


def _import_azure_blob(grant: Grant) -> dict[str, Any]:
    # CloudConvert derives the endpoint from storage_account; the SAS is the only credential
    return {"operation": "import/azure/blob", "storage_account": grant.secret["account_name"],
            "sas_token": grant.secret["sas_token"], "container": grant.location.partition("/")[2],
            "blob": grant.key}


def _sftp_account(grant: Grant) -> dict[str, Any]:
    account: dict[str, Any] = {"host": grant.secret["host"], "port": int(grant.secret["port"]),
                               "username": grant.secret["username"]}
    for field in ("password", "private_key"):
        if grant.secret.get(field):
            account[field] = grant.secret[field]
    return account


def _import_sftp(grant: Grant) -> dict[str, Any]:
    return {"operation": "import/sftp", **_sftp_account(grant), "file": grant.key}


def _export_sftp(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    return {"operation": "export/sftp", **_sftp_account(grant), "file": grant.key}


def _export_gcs(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    # the fields of import/google-cloud-storage, which export mirrors; no metadata field
    return {"operation": "export/google-cloud-storage",
            "project_id": grant.secret["project_id"], "bucket": grant.location,
            "client_email": grant.secret["client_email"],
            "private_key": grant.secret["private_key"], "file": spec.output.key}


#: (storage, grant kind) -> the task that imports with it natively
IMPORT_TASKS: dict[tuple[str, str], Callable[[Grant], dict[str, Any]]] = {
    ("s3", "sts_session"): _import_s3,
    ("sftp", "sftp_account"): _import_sftp,
    ("azure_blob", "sas"): _import_azure_blob,
}
#: (storage, grant kind) -> the task that exports with it natively
EXPORT_TASKS: dict[tuple[str, str], Callable[[Grant, JobSpec], dict[str, Any]]] = {
    ("s3", "sts_session"): _export_s3,
    ("sftp", "sftp_account"): _export_sftp,
    ("gcs", "gcs_service_account"): _export_gcs,
}


class _UploadForm:
    """A multipart/form-data body of known length that reads the file afresh each time it is
    iterated, so a retried post sends it whole again without holding it in memory."""

    def __init__(self, parameters: Mapping[str, Any], filename: str, size: int,
                 open_stream: Callable[[], Iterator[bytes]]) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        fields = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode() for name, value in parameters.items())
        # quotes and line breaks cannot appear raw in the header; HTML forms escape them so
        quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        self._head = fields + (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._size = size
        self._open = open_stream
        self.length = len(self._head) + size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        for chunk in self._open():
            sent += len(chunk)
            if sent > self._size:
                break
            yield chunk
        if sent != self._size:
            raise StorageError(f"the input changed while it was uploaded ({sent} bytes read, "
                               f"{self._size} announced)")
        yield self._tail


def _s3_credentials(grant: Grant) -> dict[str, str]:
    return {
        "access_key_id": grant.secret["access_key_id"],
        "secret_access_key": grant.secret["secret_access_key"],
        "session_token": grant.secret["session_token"],
    }
