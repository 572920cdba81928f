"""The CloudConvert API v2 dialect of the sandbox: bearer-key authentication, validation of
`POST /v2/jobs` bodies, the paginated `GET /v2/jobs` listing (`filter[tag]`, `filter[status]`,
`include=tasks`, `page`, `per_page`), translation of CloudConvert task payloads into the neutral
operation specs of models.py, rendering of jobs and tasks as CloudConvert returns them
(`{"data": ...}`, with credentials hidden), and the signed `job.finished` / `job.failed`
callback. Field and operation names follow the CloudConvert v2 documents in shared/seeds exactly;
execution is not done here."""

from __future__ import annotations

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
from .gcs_io import GcsAccess
from .models import (
    ApiRequest,
    ApiResponse,
    Backend,
    Callback,
    Convert,
    ExportAzureBlob,
    ExportGcs,
    ExportS3,
    ExportUrl,
    Faults,
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


@dataclass(frozen=True)
class _Fields:
    required: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()


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
        ("input", "output_format"), ("input_format", "output_format", "filename"), ("options",)
    ),
    "export/s3": _Fields(
        ("input", *_S3_REQUIRED),
        (*_S3_STRINGS, "acl", "cache_control", "content_type", "server_side_encryption"),
        ("metadata", "tagging"),
    ),
    "export/url": _Fields(("input",)),
    "import/azure/blob": _Fields(_AZURE_REQUIRED, (*_AZURE_STRINGS, "filename")),
    "export/azure/blob": _Fields(("input", *_AZURE_REQUIRED), _AZURE_STRINGS, ("metadata",)),
    # the fields of import/google-cloud-storage, which export mirrors (no metadata)
    "export/google-cloud-storage": _Fields(("input", *_GCS_REQUIRED), _GCS_STRINGS),
    "import/upload": _Fields((), ("redirect",)),
    "import/sftp": _Fields(("host", "username"), (*_SFTP_STRINGS, "filename")),
    "export/sftp": _Fields(("input", "host", "username"), _SFTP_STRINGS),
}


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
            return Convert(p["output_format"], p.get("input_format"), options, p.get("filename"))
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
            return ExportAzureBlob(_azure_access(p), p.get("blob"), p.get("blob_prefix"),
                                   p.get("metadata"))
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
        self._api_key = api_key.encode()
        self._signing_secret = signing_secret.encode()
        self._base_url = base_url
        #: keys minted with a scope set (the configured key has every scope)
        self._scoped_keys: dict[bytes, frozenset[str]] = {}

    def mint_key(self, scopes: frozenset[str]) -> str:
        """A new API key holding only ``scopes`` (task.read, task.write, ...), as the
        dashboard creates them."""
        key = secrets.token_urlsafe(24)
        self._scoped_keys[key.encode()] = frozenset(scopes)
        return key

    def _key_scopes(self, token: bytes) -> frozenset[str] | None:
        """The scopes of the key ``token``, None for an unknown key."""
        if hmac.compare_digest(token, self._api_key):
            return SCOPES
        return next((scopes for key, scopes in self._scoped_keys.items()
                     if hmac.compare_digest(token, key)), None)

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResponse:
        upload = request.path[len(self.prefix):].strip("/").split("/")
        if upload[0] == "upload" and len(upload) == 2 and request.method == "POST":
            # the form's own signature authorises an upload, not the API key
            status, message = self._backend.uploads.accept(
                upload[1], request.headers.get("content-type", ""), request.body)
            return _json(status, {"message": message})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        scopes = self._key_scopes(token.strip().encode()) if scheme.lower() == "bearer" else None
        if scopes is None:
            return _error(401, "Unauthenticated.", "UNAUTHENTICATED")
        # task.read reads tasks and jobs, task.write creates, updates and deletes them
        if ("task.read" if request.method == "GET" else "task.write") not in scopes:
            return _error(403, "Invalid scope(s) provided.", "FORBIDDEN")
        parts = request.path[len(self.prefix):].strip("/").split("/")
        match parts, request.method:
            case ["jobs"], "POST":
                return self._create_job(request.body)
            case ["jobs"], "GET":
                return self._list_jobs(request.query)
            case ["jobs", job_id], "GET":
                job = self._backend.job(job_id)
                if job is None or job.dialect != DIALECT:
                    return _error(404, "Job not found.", "NOT_FOUND")
                return _json(200, {"data": self.render_job(job)})
            case ["tasks", task_id], "GET":
                task = self._backend.task(task_id)
                owner = self._backend.job(task.job_id) if task else None
                if task is None or owner is None or owner.dialect != DIALECT:
                    return _error(404, "Task not found.", "NOT_FOUND")
                return _json(200, {"data": self.render_task(task)})
            case (["jobs"] | ["jobs", _] | ["tasks", _]), _:
                return _error(405, "Method not allowed.", "METHOD_NOT_ALLOWED")
        return _error(404, "Not found.", "NOT_FOUND")

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
        return self._backend.answer_created(faults, _json(201, {"data": rendered}))

    def _list_jobs(self, query: str) -> ApiResponse:
        """Newest first, as CloudConvert lists them. Filters match exactly; jobs carry their
        tasks only with `include=tasks`."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        errors: dict[str, list[str]] = {}
        numbers: dict[str, int] = {}
        for name, default in (("page", 1), ("per_page", DEFAULT_PER_PAGE)):
            text = params.get(name, str(default))
            if not text.isdigit() or int(text) < 1:
                errors[name] = [f"The {name} must be a positive integer."]
            else:
                numbers[name] = int(text)
        status = params.get("filter[status]")
        if status is not None and status not in JOB_STATUSES:
            errors["filter.status"] = ["The selected filter.status is invalid."]
        if errors:
            return _error(422, "The given data was invalid.", "INVALID_DATA", errors=errors)
        page, per_page = numbers["page"], numbers["per_page"]
        include_tasks = "tasks" in params.get("include", "").split(",")
        with self._backend.lock:
            jobs = self._backend.jobs(DIALECT, tag=params.get("filter[tag]"))
            if status is not None:
                jobs = [job for job in jobs if job.status == status]
            jobs.reverse()
            start = (page - 1) * per_page
            shown = jobs[start:start + per_page]
            data = [self.render_job(job, include_tasks=include_tasks) for job in shown]
        path = f"{self._base_url()}{self.prefix}/jobs"
        kept = {k: v for k, v in params.items() if k not in ("page",)}

        def link(number: int) -> str:
            return f"{path}?{urlencode({**kept, 'page': number})}"

        return _json(200, {
            "data": data,
            "links": {
                "first": link(1),
                "last": None,
                "prev": link(page - 1) if page > 1 else None,
                "next": link(page + 1) if start + per_page < len(jobs) else None,
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
                result = {"files": [
                    {"filename": f.filename, "size": f.size}
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

    def build_callback(self, job: Job) -> Callback | None:
        if not job.webhook_url:
            return None
        event = "job.finished" if job.status == "finished" else "job.failed"
        # Compact, with "/" escaped as PHP's json_encode does: a receiver that verifies a
        # re-serialised body instead of the raw bytes fails here as it would in production.
        text = json.dumps({"event": event, "job": self.render_job(job)}, separators=(",", ":"))
        body = text.replace("/", "\\/").encode()
        signature = hmac.new(self._signing_secret, body, hashlib.sha256).hexdigest()
        return Callback(
            url=job.webhook_url,
            event=event,
            body=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature,
                "User-Agent": USER_AGENT,
            },
            retry=_worth_retrying,
        )


def _worth_retrying(status: int | None) -> bool:
    """CloudConvert retries network errors and 5xx; 2xx and 4xx (410 included, which
    disables the webhook) end the delivery."""
    return status is None or status >= 500
