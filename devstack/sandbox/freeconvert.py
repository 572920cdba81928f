"""The FreeConvert API v1 dialect of the sandbox, mounted below /freeconvert/v1 (the service
itself is https://api.freeconvert.com/v1): bearer-key authentication, ``POST /process/jobs``
(a map of named tasks), ``GET /process/jobs`` (``tag``, ``status``, ``page``, ``per_page``) and
``GET /process/jobs/{id}``, rendered as FreeConvert returns them (unwrapped; statuses
created|processing|completed|failed; ``result.url`` on finished exports, ``result.errorCode`` /
``result.msg`` on failures; credentials hidden), and the account's webhook (``job.success`` /
``job.failed``, the job in the body) signed with ``FreeConvert-Signature``, lowercase hex
HMAC-SHA256 of the raw body. FreeConvert webhooks belong to the account, not to a job, so the
sandbox has one, set with ``Sandbox.set_freeconvert_webhook``. ``import/s3`` and ``export/s3``
take no session token, exactly as documented, so temporary credentials fail here too. Field and
operation names follow the FreeConvert document in shared/seeds; execution is in executor.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from .azure_io import AzureAccess
from .backend import Backend
from .cloudconvert_v2 import retry_after
from .models import (
    INPUT_TASK_FAILED,
    ApiRequest,
    ApiResponse,
    Callback,
    Convert,
    ExportAzureBlob,
    ExportS3,
    ExportUrl,
    ImportAzureBlob,
    ImportS3,
    ImportUrl,
    Job,
    Operation,
    ResultFile,
    Task,
    TaskSpec,
    order_by_dependencies,
)
from .storage_io import S3Access

DIALECT = "freeconvert/v1"
SIGNATURE_HEADER = "FreeConvert-Signature"
USER_AGENT = "FreeConvert-Sandbox"
HIDDEN_FIELDS = frozenset({"access_key_id", "secret_access_key", "sas_token",
                           "storage_access_key", "password", "private_key"})
NOT_EMULATED = frozenset({"import/upload", "import/base64", "import/googlecloud", "import/sftp",
                          "compress", "merge", "export/googlecloud", "export/sftp"})
#: neutral status -> FreeConvert's
STATUS = {"waiting": "created", "processing": "processing", "finished": "completed",
          "error": "failed"}
JOB_STATUSES = frozenset(STATUS.values())
_S3 = ("bucket", "region", "access_key_id", "secret_access_key", "key")
_AZURE = ("storage_account", "container", "sas_token")
#: operation -> fields that must be non-empty
REQUIRED: dict[str, tuple[str, ...]] = {
    "import/url": ("url",),
    "import/s3": _S3,
    "import/azureblob": (*_AZURE, "blob"),
    "convert": ("input", "output_format"),
    "export/url": ("input",),
    "export/s3": ("input", *_S3),
    "export/azureblob": ("input", *_AZURE),
}
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload).encode(),
                       {"Content-Type": "application/json", **(headers or {})})


def _error(status: int, message: str, **extra: object) -> ApiResponse:
    return _json(status, {"message": message, **extra})


def _time(value: str | None) -> str | None:
    """models.now() (ISO 8601, +00:00) as FreeConvert writes times: milliseconds and Z."""
    return value.replace("+00:00", ".000Z") if value else None


def _inputs(payload: Mapping[str, Any]) -> tuple[str, ...]:
    value = payload.get("input")
    return (value,) if isinstance(value, str) else tuple(value or ())


def validate_job(body: object) -> list[TaskSpec]:
    """TaskSpecs in dependency order, or ValueError carrying {field: [problems]}."""
    errors: dict[str, list[str]] = {}
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError({"tasks": ["A job must include at least one task."]})
    for name, payload in tasks.items():
        where = f"tasks.{name}"
        problems = errors.setdefault(where, [])
        operation = payload.get("operation") if isinstance(payload, dict) else None
        if not _TASK_NAME.match(name):
            problems.append("Task names may only contain alphanumerals, dash and underscore.")
        if operation in NOT_EMULATED:
            problems.append(f"operation {operation} is not emulated by the convbridge sandbox")
        elif operation not in REQUIRED or not isinstance(payload, dict):
            problems.append(f"operation {operation!r} is invalid")
        else:
            problems.extend(f"{field} is required" for field in REQUIRED[operation]
                            if payload.get(field) in (None, "", []))
            if operation == "export/azureblob" and not (payload.get("blob")
                                                        or payload.get("blob_prefix")):
                problems.append("blob or blob_prefix is required")
            problems.extend(f"input {ref!r} is not another task of this job"
                            for ref in _inputs(payload) if ref not in tasks or ref == name)
        if not problems:
            del errors[where]
    if errors:
        raise ValueError(errors)
    try:
        order = order_by_dependencies({name: _inputs(p) for name, p in tasks.items()})
    except ValueError as exc:
        raise ValueError({"tasks": [f"circular input references: {exc}"]}) from exc
    return [TaskSpec(name, tasks[name]["operation"], _operation(tasks[name]), tasks[name],
                     _inputs(tasks[name])) for name in order]


def _s3(p: Mapping[str, Any]) -> S3Access:
    # no session_token: FreeConvert's S3 tasks take long-lived keys only
    return S3Access(bucket=p["bucket"], region=p["region"], access_key_id=p["access_key_id"],
                    secret_access_key=p["secret_access_key"], endpoint=p.get("endpoint"))


def _azure(p: Mapping[str, Any]) -> AzureAccess:
    return AzureAccess(account=p["storage_account"], container=p["container"],
                       sas_token=p["sas_token"])


def _operation(p: Mapping[str, Any]) -> Operation:
    match p["operation"]:
        case "import/url":
            return ImportUrl(p["url"], p.get("filename"))
        case "import/s3":
            return ImportS3(_s3(p), p["key"], filename=p.get("filename"))
        case "import/azureblob":
            return ImportAzureBlob(_azure(p), p["blob"], filename=p.get("filename"))
        case "convert":
            # a paged input to a one-page image format: a file per page, exported one by one
            return Convert(p["output_format"], p.get("input_format"), p.get("options") or {},
                           split_pages=True)
        case "export/s3":
            return ExportS3(_s3(p), p["key"], acl=p.get("acl"))
        case "export/azureblob":
            return ExportAzureBlob(_azure(p), p.get("blob"), p.get("blob_prefix"),
                                   p.get("metadata"))
        case _:
            return ExportUrl(p.get("filename"), guid_names=True)


def _redacted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (None if k in HIDDEN_FIELDS else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


class FreeConvertV1:
    """Serves FreeConvert API v1 below `prefix`."""

    def __init__(self, backend: Backend, *, api_key: str, signing_secret: str,
                 base_url: Callable[[], str], prefix: str = "/freeconvert/v1") -> None:
        self.prefix = prefix
        self._backend = backend
        self._api_key = api_key.encode()
        self._signing_secret = signing_secret.encode()
        self._base_url = base_url
        self._lock = threading.Lock()
        self._webhook_url: str | None = None

    def set_webhook(self, url: str | None) -> None:
        """The account's webhook for job.success and job.failed (None: no webhook)."""
        with self._lock:
            self._webhook_url = url

    def handle(self, request: ApiRequest) -> ApiResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self._api_key):
            return _error(401, "Unauthorized -- Your API key is invalid.")
        match request.path[len(self.prefix):].strip("/").split("/"), request.method:
            case ["process", "jobs"], "POST":
                return self._create_job(request.body)
            case ["process", "jobs"], "GET":
                return self._list_jobs(request.query)
            case ["process", "jobs", job_id], "GET":
                job = self._backend.job(job_id)
                if job is None or job.dialect != DIALECT:
                    return _error(404, "Not Found -- The specified content could not be found.")
                return _json(200, self.render_job(job))
            case (["process", "jobs"] | ["process", "jobs", _]), _:
                return _error(405, "Method Not Allowed")
        return _error(404, "Not Found -- The specified content could not be found.")

    def _create_job(self, raw: bytes) -> ApiResponse:
        faults = self._backend.faults
        rejection = self._backend.draw_rejection(faults)
        if rejection == 429:
            return _json(429, {"message": "Too Many Requests"},
                         {"Retry-After": retry_after(faults), "X-RateLimit-Remaining": "0"})
        if rejection is not None:
            return _json(rejection, {"message": "Service Unavailable"},
                         {"Retry-After": retry_after(faults)})
        if self._backend.over_job_cap(DIALECT):
            return _json(429, {"message": "Too Many Requests"},
                         {"Retry-After": retry_after(faults), "X-RateLimit-Remaining": "0"})
        try:
            body = json.loads(raw or b"null")
            specs = validate_job(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "Bad Request -- the body is not valid JSON.")
        except ValueError as exc:
            return _error(400, "Bad Request -- Your request parameter is invalid.",
                          errors=exc.args[0])
        tag = body.get("tag")
        job = self._backend.create_job(DIALECT, specs, tag if isinstance(tag, str) else None,
                                       None)
        with self._backend.lock:
            rendered = self.render_job(job)
        self._backend.run(job, self.build_callback)
        return self._backend.answer_created(_json(201, rendered))

    def _list_jobs(self, query: str) -> ApiResponse:
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            page = max(1, int(params.get("page", "1")))
            per_page = min(200, max(1, int(params.get("per_page", "50"))))
        except ValueError:
            return _error(400, "Bad Request -- page and per_page are integers.")
        status = params.get("status")
        with self._backend.lock:
            jobs = [job for job in self._backend.jobs(DIALECT, tag=params.get("tag"))
                    if status is None or STATUS[job.status] == status]
            jobs.reverse()
            shown = jobs[(page - 1) * per_page:page * per_page]
            docs = [self.render_job(job, include_tasks="tasks" in params.get("include", ""))
                    for job in shown]
        pages = max(1, math.ceil(len(jobs) / per_page))
        return _json(200, {
            "docs": docs, "totalDocs": len(jobs), "limit": per_page, "totalPages": pages,
            "page": page, "pagingCounter": (page - 1) * per_page + 1,
            "hasPrevPage": page > 1, "hasNextPage": page < pages,
            "prevPage": page - 1 if page > 1 else None,
            "nextPage": page + 1 if page < pages else None,
        })

    # -- rendering -----------------------------------------------------------------------------

    def render_job(self, job: Job, *, include_tasks: bool = True) -> dict[str, Any]:
        with self._backend.lock:
            rendered: dict[str, Any] = {
                "id": job.id, "tag": job.tag, "interface": "api", "isRemoved": False,
                "createdAt": _time(job.created_at),
                "updatedAt": _time(job.ended_at or job.started_at or job.created_at),
                "startedAt": _time(job.started_at), "status": STATUS[job.status],
            }
            if include_tasks:
                rendered["tasks"] = [self.render_task(task) for task in job.tasks]
            root = _root_failure(job)
            if root is not None:
                rendered["result"] = {"errorCode": root.code, "msg": root.message}
            rendered["links"] = {"self": f"{self._links()}/process/jobs/{job.id}"}
            return rendered

    def render_task(self, task: Task) -> dict[str, Any]:
        with self._backend.lock:
            result: dict[str, Any] | None = None
            if task.status == "error":
                result = {"errorCode": task.code, "msg": task.message}
            elif task.status == "finished" and task.result_files:
                result = _export_result([f for f in task.result_files if f.url])
            return {
                "id": task.id, "name": task.name, "operation": task.operation,
                "status": STATUS[task.status], "message": task.message, "code": task.code,
                "ignoreError": False, "job": task.job_id, "payload": _redacted(task.payload),
                "dependsOn": list(task.input_ids), "result": result,
                "createdAt": _time(task.created_at), "endedAt": _time(task.ended_at),
                "updatedAt": _time(task.ended_at or task.started_at or task.created_at),
                "server": "sandbox.freeconvert.local",
                "links": {"self": f"{self._links()}/process/tasks/{task.id}"},
            }

    def _links(self) -> str:
        return f"{self._base_url()}{self.prefix}"

    # -- webhook -------------------------------------------------------------------------------

    def build_callback(self, job: Job) -> Callback | None:
        with self._lock:
            url = self._webhook_url
        if url is None:
            return None
        event = "job.success" if job.status == "finished" else "job.failed"
        body = json.dumps({"event": event, "job": self.render_job(job)},
                          separators=(",", ":")).encode()
        signature = hmac.new(self._signing_secret, body, hashlib.sha256).hexdigest()
        return Callback(url=url, event=event, body=body, retry=self._worth_retrying, headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: signature,
            "User-Agent": USER_AGENT})

    def _worth_retrying(self, status: int | None) -> bool:
        """FreeConvert retries 4xx and 5xx (3 times, 30 minutes apart); 410 disables the
        webhook."""
        if status == 410:
            self.set_webhook(None)
            return False
        return status is None or status >= 400


def _export_result(files: list[ResultFile]) -> dict[str, Any] | None:
    """``result.url`` for one exported file (as the seed shows); several are exported
    individually unless ``archive_multiple_files`` (not emulated), each listed in
    ``result.files`` with its ``url``, ``filename`` and ``size``."""
    if not files:
        return None
    if len(files) == 1:
        return {"url": files[0].url}
    return {"files": [{"filename": f.filename, "url": f.url, "size": f.size} for f in files]}


def _root_failure(job: Job) -> Task | None:
    failed = [t for t in job.tasks if t.status == "error"]
    return next((t for t in failed if t.code != INPUT_TASK_FAILED), failed[0] if failed else None)
