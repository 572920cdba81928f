"""The CloudConvert API v2 dialect of the sandbox: bearer-key authentication with key scopes
(`task.read` for reads, `task.write` for writes; 403 without), validation of `POST /v2/jobs`
bodies (import and export tasks refuse fields their documents do not list), the paginated
`GET /v2/jobs` listing (`filter[tag]`, `filter[status]`, `include=tasks`, `page`, `per_page`)
and `GET /v2/tasks` listing (`filter[job_id]`, `filter[status]`, `filter[operation]`), the sync
API the SDKs' `wait` calls (sync.api.cloudconvert.com, below /sync/v2 here: the GET answers
once the job or task has ended), translation of CloudConvert task payloads into the neutral
operation specs of models.py, rendering of jobs and tasks as CloudConvert returns them
(`{"data": ...}`, with credentials hidden), and the signed `job.finished` / `job.failed`
callback. Field and operation names follow the CloudConvert v2 documents in shared/seeds and
the official SDKs' task types; execution is not done here."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .azure_io import AzureAccess
from .backend import Backend
from .faults import Faults
from .gcs_io import GcsAccess
from .models import (
    ApiRequest,
    ApiResponse,
    Callback,
    Convert,
    ExportAzureBlob,
    ExportGcs,
    ExportS3,
    ExportUrl,
    ImportAzureBlob,
    ImportS3,
    ImportUrl,
    Job,
    Operation,
    Task,
    TaskSpec,
    order_by_dependencies,
)
from .sftp_io import ExportSftp, ImportSftp, ImportUpload, SftpAccess
from .storage_io import S3Access

DIALECT = "cloudconvert/v2"
SIGNATURE_HEADER = "CloudConvert-Signature"
USER_AGENT = "CloudConvert-Sandbox"

# Never echoed back: CloudConvert hides credentials in every response.
HIDDEN_FIELDS = frozenset({
    "access_key_id", "secret_access_key", "session_token", "sas_token", "password",
    "private_key", "storage_access_key", "headers",
})

# Documented by CloudConvert but not emulated here; rejected with a message saying so,
# rather than accepted and then failed in a way the real service never would.
NOT_EMULATED = frozenset({
    "import/base64", "import/raw",
    "import/google-cloud-storage", "import/openstack",
    "export/openstack",
    "optimize", "watermark", "capture-website", "thumbnail", "merge", "archive", "command",
    "metadata", "metadata/write",
})

_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# RFC 3987 forbids these unencoded; CloudConvert rejects such URLs (spaces included).
_URL_FORBIDDEN = re.compile(r"[\s<>\"{}|\\^`\x00-\x1f\x7f]")
_CONVERT_OPTIONS = ("quality", "width", "height")
JOB_STATUSES = ("waiting", "processing", "finished", "error")
DEFAULT_PER_PAGE = 100
TASK_STATUSES = ("waiting", "processing", "finished", "error")
# The scopes an API key can be given (seed 003, "Available Scopes"); the sandbox's own key
# has them all, Sandbox.mint_cloudconvert_key makes one with fewer.
SCOPES = frozenset({"user.read", "user.write", "task.read", "task.write", "webhook.read",
                    "webhook.write"})
# How long the sync API (sync.api.cloudconvert.com) holds a GET before answering with the
# job or task as it is; the real service waits for the end too, within its own limit.
SYNC_WAIT_SECONDS = 60.0
# Task fields every operation takes besides its own (seed 003 changelog: ignore_error).
_COMMON_FIELDS = frozenset({"operation", "input", "ignore_error"})


@dataclass(frozen=True)
class _Fields:
    """An operation's fields. `exact`: the documents list every field the operation takes
    (import and export tasks), so any other is refused as CloudConvert's validation does;
    convert tasks take open-ended engine options and are not checked."""

    required: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    exact: bool = True

    def known(self) -> frozenset[str]:
        return _COMMON_FIELDS | {*self.required, *self.strings, *self.objects, *self.others}


_S3_STRINGS = (
    "bucket", "region", "endpoint", "key", "key_prefix", "access_key_id", "secret_access_key",
    "session_token",
)
_S3_REQUIRED = ("bucket", "region", "access_key_id", "secret_access_key")

_AZURE_STRINGS = (
    "storage_account", "storage_access_key", "sas_token", "container", "blob", "blob_prefix",
)
_AZURE_REQUIRED = ("storage_account", "container")

_GCS_REQUIRED = ("project_id", "bucket", "client_email", "private_key")
_GCS_STRINGS = (*_GCS_REQUIRED, "file", "file_prefix")

_SFTP_STRINGS = ("host", "username", "password", "private_key", "file", "path")

_SCHEMAS: dict[str, _Fields] = {
    "import/url": _Fields(("url",), ("url", "filename"), ("headers",)),
    "import/s3": _Fields(_S3_REQUIRED, (*_S3_STRINGS, "filename")),
    "convert": _Fields(
        ("input", "output_format"), ("input_format", "output_format", "filename"), ("options",),
        exact=False,
    ),
    "export/s3": _Fields(
        ("input", *_S3_REQUIRED),
        (*_S3_STRINGS, "acl", "cache_control", "content_type", "server_side_encryption"),
        ("metadata", "tagging"),
    ),
    "export/url": _Fields(("input",), others=("inline", "archive_multiple_files")),
    "import/azure/blob": _Fields(_AZURE_REQUIRED, (*_AZURE_STRINGS, "filename")),
    # the fields the official SDKs list: no metadata, so the service sets none on the blob
    "export/azure/blob": _Fields(("input", *_AZURE_REQUIRED), _AZURE_STRINGS),
    # the fields of import/google-cloud-storage, which export mirrors (no metadata)
    "export/google-cloud-storage": _Fields(("input", *_GCS_REQUIRED), _GCS_STRINGS),
    "import/upload": _Fields((), ("redirect",)),
    "import/sftp": _Fields(("host", "username"), (*_SFTP_STRINGS, "filename"), others=("port",)),
    "export/sftp": _Fields(("input", "host", "username"), _SFTP_STRINGS, others=("port",)),
}


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _paging(params: Mapping[str, str]) -> tuple[dict[str, list[str]], int, int]:
    """(validation errors, page, per_page) of a listing's query."""
    errors: dict[str, list[str]] = {}
    numbers = {"page": 1, "per_page": DEFAULT_PER_PAGE}
    for name in numbers:
        text = params.get(name, str(numbers[name]))
        if not text.isdigit() or int(text) < 1:
            errors[name] = [f"The {name} must be a positive integer."]
        else:
            numbers[name] = int(text)
    return errors, numbers["page"], numbers["per_page"]


class InvalidJob(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("The given data was invalid.")
        self.errors = errors


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> ApiResponse:
    return ApiResponse(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, message: str, code: str, **extra: object) -> ApiResponse:
    return _json(status, {"message": message, "code": code, **extra})


def retry_after(faults: Faults) -> str:
    """Integer seconds, or an IMF-fixdate at least that many seconds ahead (rounded up to the
    next whole second, since HTTP dates have no fractions)."""
    if not faults.retry_after_http_date:
        return str(faults.retry_after_seconds)
    when = datetime.fromtimestamp(math.ceil(time.time()) + faults.retry_after_seconds, UTC)
    return format_datetime(when, usegmt=True)


def _redacted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (None if k in HIDDEN_FIELDS else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _inputs(payload: Mapping[str, Any]) -> tuple[str, ...]:
    value = payload.get("input")
    return (value,) if isinstance(value, str) else tuple(value or ())


def _valid_http_url(url: object) -> bool:
    if not isinstance(url, str) or _URL_FORBIDDEN.search(url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_job(body: object) -> list[TaskSpec]:
    """TaskSpecs in dependency order, or InvalidJob listing every problem found."""
    errors: dict[str, list[str]] = {}

    def fail(where: str, message: str) -> None:
        errors.setdefault(where, []).append(message)

    if not isinstance(body, dict):
        raise InvalidJob({"tasks": ["The tasks field is required."]})
    tasks = body.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        fail("tasks", "The tasks field is required and must be an object of named tasks.")
        tasks = {}
    for name in ("tag", "webhook_url"):
        if body.get(name) is not None and not isinstance(body[name], str):
            fail(name, f"The {name} must be a string.")
    if isinstance(body.get("webhook_url"), str) and not _valid_http_url(body["webhook_url"]):
        fail("webhook_url", "The webhook_url format is invalid.")

    for name, payload in tasks.items():
        where = f"tasks.{name}"
        if not _TASK_NAME.match(name):
            fail(where, "Task names may only contain letters, digits, dashes and underscores.")
        if not isinstance(payload, dict):
            fail(where, f"The {where} must be an object.")
            continue
        operation = payload.get("operation")
        schema = _SCHEMAS.get(operation) if isinstance(operation, str) else None
        if schema is None:
            if operation in NOT_EMULATED:
                fail(f"{where}.operation",
                     f"The operation {operation} is not emulated by the convbridge sandbox.")
            else:
                fail(f"{where}.operation", f"The selected {where}.operation is invalid.")
            continue
        if schema.exact:
            for field_name in sorted(set(payload) - schema.known()):
                fail(f"{where}.{field_name}",
                     f"The {where}.{field_name} field is not allowed for {operation}.")
        for field_name in schema.required:
            if payload.get(field_name) in (None, "", []):
                fail(f"{where}.{field_name}", f"The {where}.{field_name} field is required.")
        for field_name in schema.strings:
            if payload.get(field_name) is not None and not isinstance(payload[field_name], str):
                fail(f"{where}.{field_name}", f"The {where}.{field_name} must be a string.")
        for field_name in schema.objects:
            if payload.get(field_name) is not None and not isinstance(payload[field_name], dict):
                fail(f"{where}.{field_name}", f"The {where}.{field_name} must be an object.")
        if operation == "import/url" and payload.get("url") and not _valid_http_url(
            payload["url"]
        ):
            fail(f"{where}.url", f"The {where}.url format is invalid.")
        if operation == "import/s3" and not payload.get("key") and not payload.get("key_prefix"):
            fail(f"{where}.key", f"The {where}.key field is required when key_prefix is not "
                                 "present.")
        if operation in ("import/sftp", "export/sftp"):
            _validate_sftp(payload, where, operation, fail)
        if operation in ("import/azure/blob", "export/azure/blob"):
            _validate_azure(payload, where, operation, fail)
        if "input" in payload:
            raw = payload["input"]
            refs = [raw] if isinstance(raw, str) else raw
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                fail(f"{where}.input", f"The {where}.input must be a task name or a list of "
                                       "task names.")
                continue
            for ref in refs:
                if ref not in tasks or ref == name:
                    fail(f"{where}.input",
                         f"The {where}.input references {ref!r}, which is not another task "
                         "of this job.")
    if errors:
        raise InvalidJob(errors)
    try:
        order = order_by_dependencies({name: _inputs(p) for name, p in tasks.items()})
    except ValueError as exc:
        raise InvalidJob({"tasks": [f"The tasks have circular input references: {exc}."]}) \
            from exc
    return [
        TaskSpec(name, tasks[name]["operation"], _operation(tasks[name]), tasks[name],
                 _inputs(tasks[name]))
        for name in order
    ]


def _access(p: Mapping[str, Any]) -> S3Access:
    return S3Access(
        bucket=p["bucket"], region=p["region"], access_key_id=p["access_key_id"],
        secret_access_key=p["secret_access_key"], session_token=p.get("session_token"),
        endpoint=p.get("endpoint"),
    )


def _operation(p: Mapping[str, Any]) -> Operation:
    match p["operation"]:
        case "import/url":
            return ImportUrl(p["url"], p.get("filename"), p.get("headers"))
        case "import/s3":
            return ImportS3(_access(p), p.get("key"), p.get("key_prefix"), p.get("filename"))
        case "convert":
            # CloudConvert takes engine options at the top level of the task; an `options`
            # object is accepted too, the top level winning.
            options = {**(p.get("options") or {})}
            options.update({k: p[k] for k in _CONVERT_OPTIONS if p.get(k) is not None})
            return Convert(p["output_format"], p.get("input_format"), options, p.get("filename"),
                           split_pages=True)
        case "export/s3":
            tagging = p.get("tagging")
            return ExportS3(
                _access(p), p.get("key"), p.get("key_prefix"), p.get("acl"),
                p.get("cache_control"), p.get("metadata"), p.get("content_type"),
                p.get("server_side_encryption"), urlencode(tagging) if tagging else None,
            )
        case "import/azure/blob":
            return ImportAzureBlob(_azure_access(p), p.get("blob"), p.get("blob_prefix"),
                                   p.get("filename"))
        case "export/azure/blob":
            return ExportAzureBlob(_azure_access(p), p.get("blob"), p.get("blob_prefix"))
        case "export/google-cloud-storage":
            return ExportGcs(GcsAccess(project_id=p["project_id"], bucket=p["bucket"],
                                       client_email=p["client_email"],
                                       private_key=p["private_key"]),
                             p.get("file"), p.get("file_prefix"))
        case "import/upload":
            return ImportUpload()
        case "import/sftp":
            return ImportSftp(_sftp_access(p), p.get("file"), p.get("path"), p.get("filename"))
        case "export/sftp":
            return ExportSftp(_sftp_access(p), p.get("file"), p.get("path"))
        case _:
            return ExportUrl()


def _validate_azure(payload: Mapping[str, Any], where: str, operation: str,
                    fail: Callable[[str, str], None]) -> None:
    if payload.get("storage_access_key"):
        fail(f"{where}.storage_access_key", "Account keys are not emulated by the convbridge "
                                            "sandbox; use sas_token.")
    elif not payload.get("sas_token"):
        fail(f"{where}.sas_token", f"The {where}.sas_token field is required when "
                                   "storage_access_key is not present.")
    if operation == "import/azure/blob" and not payload.get("blob") and not payload.get(
            "blob_prefix"):
        fail(f"{where}.blob", f"The {where}.blob field is required when blob_prefix is not "
                              "present.")


def _validate_sftp(payload: Mapping[str, Any], where: str, operation: str,
                   fail: Callable[[str, str], None]) -> None:
    port = payload.get("port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 0 < port < 65536):
        fail(f"{where}.port", f"The {where}.port must be an integer.")
    if not payload.get("password") and not payload.get("private_key"):
        fail(f"{where}.password", f"The {where}.password field is required when private_key "
                                  "is not present.")
    if operation == "import/sftp" and not payload.get("file") and not payload.get("path"):
        fail(f"{where}.file", f"The {where}.file field is required when path is not present.")


def _sftp_access(p: Mapping[str, Any]) -> SftpAccess:
    return SftpAccess(host=p["host"], username=p["username"], port=p.get("port") or 22,
                      password=p.get("password"), private_key=p.get("private_key"))


def _azure_access(p: Mapping[str, Any]) -> AzureAccess:
    # the endpoint comes from the account name when the task runs, as at CloudConvert
    return AzureAccess(account=p["storage_account"], container=p["container"],
                       sas_token=p["sas_token"])


#: every scope a CloudConvert API key can hold (seed 003)
SCOPES = frozenset({"user.read", "user.write", "task.read", "task.write", "webhook.read",
                    "webhook.write"})

class CloudConvertV2:
    """Serves CloudConvert API v2 below `prefix` (by default /v2)."""

    def __init__(
        self,
        backend: Backend,
        *,
        api_key: str,
        signing_secret: str,
        base_url: Callable[[], str],
        prefix: str = "/v2",
    ) -> None:
        self.prefix = prefix
        self._backend = backend
        # the sandbox's own key has every scope
        backend.store.add_key(DIALECT, api_key, SCOPES)
        self._signing_secret = signing_secret.encode()
        self._base_url = base_url
        self._account_webhook: tuple[str, bytes] | None = None

    def set_webhook(self, url: str | None, signing_secret: str | None = None) -> None:
        """The account's webhook, as made in CloudConvert's dashboard (Webhooks) for the
        events job.finished and job.failed: every job's end is posted to `url`, signed with
        the webhook's own `signing_secret`, whether or not the job names a webhook_url (None:
        no account webhook)."""
        if url is not None and not signing_secret:
            raise ValueError("an account webhook has its own signing secret")
        with self._backend.lock:
            self._account_webhook = (url, (signing_secret or "").encode()) if url else None

    def set_job_signing_secret(self, secret: str) -> None:
        """The secret that signs callbacks to a job's own webhook_url, which CloudConvert
        does not document; by default the sandbox's signing secret."""
        with self._backend.lock:
            self._signing_secret = secret.encode()

    def mint_key(self, scopes: frozenset[str]) -> str:
        """A new API key with exactly `scopes` (from SCOPES), as the dashboard makes one."""
        unknown = scopes - SCOPES
        if unknown:
            raise ValueError(f"unknown CloudConvert scopes: {sorted(unknown)}")
        key = secrets.token_urlsafe(32)
        self._backend.store.add_key(DIALECT, key, frozenset(scopes))
        return key

    def _scopes(self, request: ApiRequest) -> frozenset[str] | None:
        """The scopes of the request's bearer key; None when it carries no known key."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._backend.store.key_scopes(DIALECT, token.strip())

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResponse:
        upload = request.path[len(self.prefix):].strip("/").split("/")
        if upload[0] == "upload" and len(upload) == 2 and request.method == "POST":
            # the form's own signature authorises an upload, not the API key
            status, message = self._backend.uploads.accept(
                upload[1], request.headers.get("content-type", ""), request.body)
            return _json(status, {"message": message})
        scopes = self._scopes(request)
        if scopes is None:
            return _error(401, "Unauthenticated.", "UNAUTHENTICATED")
        needed = "task.read" if request.method in ("GET", "HEAD") else "task.write"
        if needed not in scopes:
            return _error(403, f"Invalid scope(s) provided: this API key lacks {needed}.",
                          "FORBIDDEN")
        parts = request.path[len(self.prefix):].strip("/").split("/")
        match parts, request.method:
            case ["jobs"], "POST":
                return self._create_job(request.body)
            case ["jobs"], "GET":
                return self._list_jobs(request.query)
            case ["jobs", job_id], "GET":
                job = self._job(job_id)
                if job is None:
                    return _error(404, "Job not found.", "NOT_FOUND")
                return _json(200, {"data": self.render_job(job)})
            case ["tasks"], "GET":
                return self._list_tasks(request.query)
            case ["tasks", task_id], "GET":
                task = self._task(task_id)
                if task is None:
                    return _error(404, "Task not found.", "NOT_FOUND")
                return _json(200, {"data": self.render_task(task)})
            case (["jobs"] | ["jobs", _] | ["tasks"] | ["tasks", _]), _:
                return _error(405, "Method not allowed.", "METHOD_NOT_ALLOWED")
        return _error(404, "Not found.", "NOT_FOUND")

    def handle_sync(self, request: ApiRequest) -> ApiResponse:
        """The sync API (sync.api.cloudconvert.com, which the SDKs' `wait` calls): GET a job
        or task, answered once it has ended (or after SYNC_WAIT_SECONDS, as it then is)."""
        scopes = self._scopes(request)
        if scopes is None:
            return _error(401, "Unauthenticated.", "UNAUTHENTICATED")
        if "task.read" not in scopes:
            return _error(403, "Invalid scope(s) provided: this API key lacks task.read.",
                          "FORBIDDEN")
        match request.path[len(self.prefix):].strip("/").split("/"), request.method:
            case ["jobs", job_id], "GET":
                job = self._job(job_id)
                if job is None:
                    return _error(404, "Job not found.", "NOT_FOUND")
                self._backend.wait_until(lambda: job.status in ("finished", "error"),
                                         SYNC_WAIT_SECONDS)
                return _json(200, {"data": self.render_job(job)})
            case ["tasks", task_id], "GET":
                task = self._task(task_id)
                if task is None:
                    return _error(404, "Task not found.", "NOT_FOUND")
                self._backend.wait_until(lambda: task.status in ("finished", "error"),
                                         SYNC_WAIT_SECONDS)
                return _json(200, {"data": self.render_task(task)})
            case (["jobs", _] | ["tasks", _]), _:
                return _error(405, "Method not allowed.", "METHOD_NOT_ALLOWED")
        return _error(404, "Not found.", "NOT_FOUND")

    def _job(self, job_id: str) -> Job | None:
        job = self._backend.job(job_id)
        return job if job is not None and job.dialect == DIALECT else None

    def _task(self, task_id: str) -> Task | None:
        task = self._backend.task(task_id)
        owner = self._backend.job(task.job_id) if task else None
        return task if owner is not None and owner.dialect == DIALECT else None

    def _create_job(self, raw: bytes) -> ApiResponse:
        faults = self._backend.faults
        rejection = self._backend.draw_rejection(faults)
        if rejection is not None:
            wait = {"Retry-After": retry_after(faults)}
            if rejection == 429:
                return _json(429, {"message": "Too Many Attempts.", "code": "TOO_MANY_REQUESTS"},
                             {**wait, "X-RateLimit-Remaining": "0"})
            return _json(503, {"message": "Service Unavailable.", "code": "SERVICE_UNAVAILABLE"},
                         wait)
        if self._backend.over_job_cap(DIALECT):
            # what CloudConvert answers a plan's concurrent-jobs cap with (DESIGN.md)
            return _json(402, {"message": "Too many jobs at once.", "code": "TOO_MANY_JOBS"},
                         {"Retry-After": retry_after(faults)})
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "The request body is not valid JSON.", "INVALID_JSON")
        try:
            specs = validate_job(body)
        except InvalidJob as exc:
            return _error(422, "The given data was invalid.", "INVALID_DATA", errors=exc.errors)
        job = self._backend.create_job(DIALECT, specs, body.get("tag"), body.get("webhook_url"))
        # Render before the worker starts, so the answer shows the job as created.
        with self._backend.lock:
            rendered = self.render_job(job)
        self._backend.run(job, self.build_callback)
        return self._backend.answer_created(_json(201, {"data": rendered}))

    def _list_jobs(self, query: str) -> ApiResponse:
        """Newest first, as CloudConvert lists them. Filters match exactly; jobs carry their
        tasks only with `include=tasks`."""
        params = _params(query)
        errors, page, per_page = _paging(params)
        status = params.get("filter[status]")
        if status is not None and status not in JOB_STATUSES:
            errors["filter.status"] = ["The selected filter.status is invalid."]
        if errors:
            return _error(422, "The given data was invalid.", "INVALID_DATA", errors=errors)
        include_tasks = "tasks" in params.get("include", "").split(",")
        with self._backend.lock:
            jobs = self._backend.jobs(DIALECT, tag=params.get("filter[tag]"))
            if status is not None:
                jobs = [job for job in jobs if job.status == status]
            jobs.reverse()
            start = (page - 1) * per_page
            data = [self.render_job(job, include_tasks=include_tasks)
                    for job in jobs[start:start + per_page]]
        return self._listing("jobs", params, page, per_page, len(jobs), data)

    def _list_tasks(self, query: str) -> ApiResponse:
        """Newest first, filtered exactly by `filter[job_id]`, `filter[status]` and
        `filter[operation]`, as GET /v2/tasks documents them."""
        params = _params(query)
        errors, page, per_page = _paging(params)
        status = params.get("filter[status]")
        if status is not None and status not in TASK_STATUSES:
            errors["filter.status"] = ["The selected filter.status is invalid."]
        if errors:
            return _error(422, "The given data was invalid.", "INVALID_DATA", errors=errors)
        wanted = {name: params[f"filter[{name}]"] for name in ("job_id", "status", "operation")
                  if f"filter[{name}]" in params}
        with self._backend.lock:
            tasks = [task for job in self._backend.jobs(DIALECT) for task in job.tasks
                     if all(getattr(task, name) == value for name, value in wanted.items())]
            tasks.reverse()
            start = (page - 1) * per_page
            data = [self.render_task(task) for task in tasks[start:start + per_page]]
        return self._listing("tasks", params, page, per_page, len(tasks), data)

    def _listing(self, what: str, params: Mapping[str, str], page: int, per_page: int,
                 total: int, data: list[dict[str, Any]]) -> ApiResponse:
        """One page of a paginated listing with its `links` and `meta`."""
        path = f"{self._base_url()}{self.prefix}/{what}"
        kept = {k: v for k, v in params.items() if k != "page"}
        start = (page - 1) * per_page

        def link(number: int) -> str:
            return f"{path}?{urlencode({**kept, 'page': number})}"

        return _json(200, {
            "data": data,
            "links": {
                "first": link(1),
                "last": None,
                "prev": link(page - 1) if page > 1 else None,
                "next": link(page + 1) if start + per_page < total else None,
            },
            "meta": {
                "current_page": page,
                "from": start + 1 if data else None,
                "path": path,
                "per_page": per_page,
                "to": start + len(data) if data else None,
            },
        })

    # -- rendering -----------------------------------------------------------------------------

    def render_job(self, job: Job, *, include_tasks: bool = True) -> dict[str, Any]:
        with self._backend.lock:
            rendered: dict[str, Any] = {
                "id": job.id,
                "tag": job.tag,
                "status": job.status,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "ended_at": job.ended_at,
            }
            if include_tasks:
                rendered["tasks"] = [self.render_task(task) for task in job.tasks]
            rendered["links"] = {"self": f"{self._base_url()}{self.prefix}/jobs/{job.id}"}
            return rendered

    def render_task(self, task: Task) -> dict[str, Any]:
        with self._backend.lock:
            result: dict[str, Any] | None = None
            if task.status == "finished" and task.result_files is not None:
                # CloudConvert documents `size` as optional on result files; the fault
                # leaves it out of export/url files, as the real service may.
                sized = not (task.operation == "export/url"
                             and self._backend.faults.omit_export_url_size)
                result = {"files": [
                    {"filename": f.filename}
                    | ({"size": f.size} if sized else {})
                    | ({"url": f.url} if f.url is not None else {})
                    for f in task.result_files
                ]}
            elif isinstance(task.spec, ImportUpload):
                result = {"form": {
                    "url": f"{self._base_url()}{self.prefix}/upload/{task.spec.slot}",
                    "parameters": self._backend.uploads.form_parameters(task.spec.slot),
                }}
            return {
                "id": task.id,
                "name": task.name,
                "job_id": task.job_id,
                "operation": task.operation,
                "status": task.status,
                "message": task.message,
                "code": task.code,
                "created_at": task.created_at,
                "started_at": task.started_at,
                "ended_at": task.ended_at,
                "depends_on_task_ids": list(task.input_ids),
                "payload": _redacted(task.payload),
                "result": result,
                "links": {"self": f"{self._base_url()}{self.prefix}/tasks/{task.id}"},
            }

    # -- callbacks -----------------------------------------------------------------------------

    def build_callback(self, job: Job) -> list[Callback]:
        """The job's own webhook_url, signed with the per-job secret, and the account's
        webhook, signed with its own: each gets the same body."""
        event = "job.finished" if job.status == "finished" else "job.failed"
        # Compact, with "/" escaped as PHP's json_encode does: a receiver that verifies a
        # re-serialised body instead of the raw bytes fails here as it would in production.
        text = json.dumps({"event": event, "job": self.render_job(job)}, separators=(",", ":"))
        body = text.replace("/", "\\/").encode()
        targets = [(job.webhook_url, self._signing_secret)] if job.webhook_url else []
        if self._account_webhook is not None:
            targets.append(self._account_webhook)
        return [Callback(
            url=url,
            event=event,
            body=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: hmac.new(secret, body, hashlib.sha256).hexdigest(),
                "User-Agent": USER_AGENT,
            },
            retry=_worth_retrying,
        ) for url, secret in targets]


class CloudConvertV2Sync:
    """The sync API host of CloudConvert v2 (sync.api.cloudconvert.com/v2), served below
    `prefix` (by default /sync/v2) on the sandbox's port."""

    def __init__(self, api: CloudConvertV2, prefix: str = "/sync/v2") -> None:
        self.prefix = prefix
        self._api = api

    def handle(self, request: ApiRequest) -> ApiResponse:
        return self._api.handle_sync(dataclasses.replace(
            request, path=self._api.prefix + request.path[len(self.prefix):]))


def _worth_retrying(status: int | None) -> bool:
    """CloudConvert retries network errors and 5xx; 2xx and 4xx (410 included, which
    disables the webhook) end the delivery."""
    return status is None or status >= 500
