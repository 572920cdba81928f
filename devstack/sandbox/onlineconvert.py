"""The Online-Convert API v2 (api2convert) dialect of the sandbox, mounted below
/onlineconvert/v2 (the service itself is https://api.api2convert.com/v2): authentication by
``X-Oc-Api-Key`` (the seed) or ``X-Api2convert-Api-Key`` (the official SDK), ``POST /jobs``
with ``input`` (``remote`` URLs; ``cloud``/``amazons3`` with ``accesskeyid``,
``secretaccesskey`` and an optional ``sessiontoken``) and ``conversion[]`` (``target``,
``options``, ``output_target`` of type ``amazons3``), ``GET /jobs`` (newest first),
``GET /jobs/{id}``, ``GET /jobs/{id}/output``, and the callback: the whole job, as
``GET /jobs/{id}`` returns it, POSTed to the job's ``callback`` URL when it ends (5xx and
network errors retried, 4xx final; on the service's own schedule, CALLBACK_TIMING, whose
10 s retry spacing ``Sandbox.set_onlineconvert_callback_timing`` may shorten for tests),
unsigned as the seed documents, or with
``X-Oc-Signature`` (HMAC-SHA256 of the body) once signed webhooks are enabled
(``Sandbox.set_onlineconvert_signing_secret``). Outputs without an output target are listed
under ``output[].uri`` (served below /files/). Credentials never appear in answers.
``amazons3`` fields name no endpoint, so they reach the sandbox's "AWS":
``Sandbox.set_aws_endpoint`` (moto in DevStack). A job created with ``process: false`` is held
(it neither runs nor calls back) until ``PATCH /jobs/{id}`` sends ``process: true``, optionally
with a ``callback``, as the seed's jobs built step by step; one created held without inputs
takes one local file, POSTed as the multipart field ``file`` to
``{server}/upload-file/{job_id}`` with the job's token in ``X-Api2convert-Token`` (the official
SDK's upload). Not emulated, and refused with a message saying so: adding inputs or
conversions to a held job (``/jobs/{id}/input``, ``/jobs/{id}/conversions``), and Azure,
Google Cloud and FTP inputs or output targets. Execution is in executor.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from .backend import Backend
from .cloudconvert_v2 import retry_after
from .models import (
    INPUT_TASK_FAILED,
    ApiRequest,
    ApiResponse,
    Callback,
    CallbackTiming,
    Convert,
    ExportS3,
    ExportUrl,
    ImportS3,
    ImportUrl,
    Job,
    Task,
    TaskSpec,
)
from .sftp_io import ImportUpload, form_fields
from .storage_io import S3Access

DIALECT = "onlineconvert/v2"
#: the key header of the seed document, and the one the official SDK (api2convert) sends
API_KEY_HEADERS = ("x-oc-api-key", "x-api2convert-api-key")
#: the per-job token header of uploads to ``{server}/upload-file/{job_id}`` (official SDK)
TOKEN_HEADER = "x-api2convert-token"
#: signed webhooks (an account setting, undocumented in the seed): HMAC-SHA256 of the body
SIGNATURE_HEADER = "X-Oc-Signature"
#: Online-Convert's delivery: the first attempt times out after 3 s, retries come 10 s later,
#: up to 10 tries (4xx answers are final, see _worth_retrying)
CALLBACK_TIMING = CallbackTiming(timeout_seconds=3.0, retry_seconds=10.0, attempts=10)
USER_AGENT = "api2convert-Sandbox"
DEFAULT_REGION = "eu-central-1"
#: neutral status -> (status.code, status.info)
STATUS = {
    "waiting": ("queued", "The job is queued for processing."),
    "processing": ("processing", "The job is being processed."),
    "finished": ("completed", "The job has been completed."),
    "error": ("failed", "The job has failed."),
}
#: task name prefix -> the ``errors[].source`` it is reported under
SOURCES = {"input": "input", "conversion": "conversion", "output": "output"}
#: neutral task failure code -> the integer ``errors[].code`` (the real API and its SDK use
#: integers; the values themselves are undocumented, so these are the sandbox's own)
ERROR_CODES = {"IMPORT_FAILED": 1010, "UNSUPPORTED_CONVERSION": 2010, "CONVERSION_FAILED": 2020,
               "EXPORT_FAILED": 3010}
#: the integer for a failure the table does not name
OTHER_ERROR = 9000


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload).encode(),
                       {"Content-Type": "application/json", **(headers or {})})


def _error(status: int, message: str, **extra: object) -> ApiResponse:
    return _json(status, {"message": message, **extra})


class OnlineConvertV2:
    """Serves the Online-Convert API v2 below `prefix`."""

    def __init__(self, backend: Backend, *, api_key: str, base_url: Callable[[], str],
                 aws_endpoint: Callable[[], str | None],
                 prefix: str = "/onlineconvert/v2") -> None:
        self.prefix = prefix
        self._backend = backend
        self._api_key = api_key.encode()
        # set by set_signing_secret: callbacks then carry X-Oc-Signature
        self._signing_secret: bytes | None = None
        # the service's own schedule unless set_callback_timing changed it
        self._callback_timing = CALLBACK_TIMING
        self._base_url = base_url
        self._aws_endpoint = aws_endpoint
        # job id -> the job's own token, as the service shows it
        self._tokens: dict[str, str] = {}
        # jobs created with process: false, waiting for PATCH process: true
        self._held: set[str] = set()

    def set_signing_secret(self, secret: str | None) -> None:
        """Turn signed webhooks on (callbacks carry ``X-Oc-Signature``) or off (None)."""
        self._signing_secret = secret.encode() if secret else None

    @property
    def callback_timing(self) -> CallbackTiming:
        return self._callback_timing

    def set_callback_timing(self, timing: CallbackTiming | None) -> None:
        """Deliver callbacks on `timing`; None: the service's own, CALLBACK_TIMING."""
        self._callback_timing = timing or CALLBACK_TIMING

    def handle(self, request: ApiRequest) -> ApiResponse:
        parts = request.path[len(self.prefix):].strip("/").split("/")
        if parts[0] == "upload-file" and len(parts) == 2 and request.method == "POST":
            # the job's own token authorises an upload, never the account key
            return self._upload(parts[1], request)
        # either header carries the key: the seed's X-Oc-Api-Key, or the SDK's
        given = [request.headers.get(name, "").encode() for name in API_KEY_HEADERS]
        if not any([hmac.compare_digest(value, self._api_key) for value in given]):
            return _error(401, "Invalid or missing API key.")
        match parts, request.method:
            case ["jobs"], "POST":
                return self._create_job(request.body)
            case ["jobs"], "GET":
                with self._backend.lock:
                    jobs = [self.render_job(job) for job in self._backend.jobs(DIALECT)]
                jobs.reverse()
                return _json(200, jobs)
            case ["jobs", job_id], "GET":
                job = self._job(job_id)
                if job is None:
                    return _error(404, "Job not found.")
                return _json(200, self.render_job(job))
            case ["jobs", job_id, "output"], "GET":
                job = self._job(job_id)
                if job is None:
                    return _error(404, "Job not found.")
                return _json(200, self.render_job(job)["output"])
            case ["jobs", job_id], "PATCH":
                return self._patch_job(job_id, request.body)
            case (["jobs"] | ["jobs", _] | ["jobs", _, _]), _:
                return _error(405, "Not emulated by the convbridge sandbox.")
        return _error(404, "Not found.")

    def _job(self, job_id: str) -> Job | None:
        job = self._backend.job(job_id)
        return job if job is not None and job.dialect == DIALECT else None

    def _upload(self, job_id: str, request: ApiRequest) -> ApiResponse:
        """A local file for a held job created without inputs: its upload input."""
        job = self._job(job_id)
        token = self._tokens.get(job_id, "") if job is not None else ""
        if job is None or not hmac.compare_digest(
                request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
            return _error(401, "Invalid or missing job token.")
        upload = next((t for t in job.tasks if isinstance(t.spec, ImportUpload)), None)
        if upload is None or not isinstance(upload.spec, ImportUpload) or \
                job_id not in self._held:
            return _error(400, "This job takes no uploads: create it with process false and "
                               "no input.")
        fields = form_fields(request.headers.get("content-type", ""), request.body)
        sent = [(filename, data) for name, filename, data in fields or [] if name == "file"]
        if not sent:
            return _error(400, "Send the file as the multipart field 'file'.")
        filename, data = sent[0]
        status, message = self._backend.uploads.put(upload.spec.slot, filename or "file", data)
        if status != 201:
            return _error(status, message)
        with self._backend.lock:
            upload.payload = {"type": "upload", "source": filename or "file",
                              "filename": filename or "file"}
            entry = {**_input_entry(upload), "size": len(data)}
        return _json(200, entry)

    def _create_job(self, raw: bytes) -> ApiResponse:
        faults = self._backend.faults
        rejection = self._backend.draw_rejection(faults)
        if rejection is not None:
            message = "Too many requests." if rejection == 429 else "Service unavailable."
            return _json(rejection, {"message": message}, {"Retry-After": retry_after(faults)})
        if self._backend.over_job_cap(DIALECT):
            return _json(429, {"message": "Too many requests."},
                         {"Retry-After": retry_after(faults)})
        try:
            body = json.loads(raw or b"null")
            specs = self._specs(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "The body is not valid JSON.")
        except ValueError as exc:
            return _error(400, "Invalid job.", errors=exc.args[0])
        callback = body.get("callback") or None
        job = self._backend.create_job(DIALECT, specs, None, callback)
        held = body.get("process") is False
        with self._backend.lock:
            self._tokens[job.id] = secrets.token_hex(16)
            if held:
                self._held.add(job.id)
            rendered = self.render_job(job)
        if not held:
            self._backend.run(job, self.build_callback)
        return self._backend.answer_created(_json(201, rendered))

    def _patch_job(self, job_id: str, raw: bytes) -> ApiResponse:
        """``process: true`` starts a held job (with the ``callback`` given here, if any);
        asking again once it runs changes nothing."""
        job = self._backend.job(job_id)
        if job is None or job.dialect != DIALECT:
            return _error(404, "Job not found.")
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "The body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("process", False), bool):
            return _error(400, "Invalid job.", errors=["process must be true or false"])
        callback = body.get("callback")
        if callback is not None and not isinstance(callback, str):
            return _error(400, "Invalid job.", errors=["callback must be a URL"])
        with self._backend.lock:
            start = body.get("process") is True and job_id in self._held
            if job_id in self._held and callback is not None:
                job.webhook_url = callback or None
            if start:
                self._held.discard(job_id)
            rendered = self.render_job(job)
        if start:
            self._backend.run(job, self.build_callback)
        return _json(200, rendered)

    # -- requests -> tasks ---------------------------------------------------------------------

    def _specs(self, body: object) -> list[TaskSpec]:
        """Inputs, then conversions (each of every input), then outputs; ValueError carries
        the list of problems."""
        if not isinstance(body, dict):
            raise ValueError(["The body must be a job object."])
        problems: list[str] = []
        if not isinstance(body.get("process", True), bool):
            problems.append("process must be true or false")
        callback = body.get("callback")
        if callback is not None and not isinstance(callback, str):
            problems.append("callback must be a URL")
        inputs, conversions = body.get("input"), body.get("conversion")
        if body.get("process") is False and not inputs:
            # a job built step by step: its input is the file uploaded before it starts
            inputs = [{"type": "upload"}]
        elif not isinstance(inputs, list) or not inputs:
            problems.append("input: at least one input is required")
            inputs = []
        if not isinstance(conversions, list) or not conversions:
            problems.append("conversion: at least one conversion is required")
            conversions = []
        specs = [self._input(i, item, problems) for i, item in enumerate(inputs)]
        names = tuple(spec.name for spec in specs if spec is not None)
        outputs: list[TaskSpec | None] = []
        for j, conversion in enumerate(conversions):
            converted = self._conversion(j, conversion, names, problems)
            specs.append(converted)
            if converted is not None:
                outputs.extend(self._outputs(j, conversion, converted.name, problems))
        if problems:
            raise ValueError(problems)
        return [spec for spec in [*specs, *outputs] if spec is not None]

    def _input(self, i: int, item: Any, problems: list[str]) -> TaskSpec | None:
        where = f"input[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            return None
        kind, source = item.get("type"), item.get("source")
        if kind == "upload" and source is None:
            return TaskSpec(f"input-{i}", "upload", ImportUpload(), item)
        if kind == "remote" and isinstance(source, str) and source.startswith(("http://",
                                                                              "https://")):
            return TaskSpec(f"input-{i}", "remote", ImportUrl(source, item.get("filename")), item)
        if kind == "cloud" and source == "amazons3":
            access = self._s3(item, where, problems)
            file = (item.get("parameters") or {}).get("file")
            if not file:
                problems.append(f"{where}.parameters.file is required")
            if access is None or not file:
                return None
            return TaskSpec(f"input-{i}", "amazons3",
                            ImportS3(access, file, filename=item.get("filename")), item)
        problems.append(f"{where}: type {kind!r} / source {source!r} is not emulated "
                        "(remote URLs and cloud amazons3 are)")
        return None

    def _conversion(self, j: int, conversion: Any, inputs: tuple[str, ...],
                    problems: list[str]) -> TaskSpec | None:
        if not isinstance(conversion, dict) or not isinstance(conversion.get("target"), str):
            problems.append(f"conversion[{j}].target is required")
            return None
        options = conversion.get("options") or {}
        return TaskSpec(f"conversion-{j}", "conversion",
                        Convert(conversion["target"], None, options), conversion, inputs)

    def _outputs(self, j: int, conversion: Mapping[str, Any], converted: str,
                 problems: list[str]) -> list[TaskSpec | None]:
        targets = conversion.get("output_target") or []
        if not targets:
            return [TaskSpec(f"output-{j}", "download", ExportUrl(), {}, (converted,))]
        found: list[TaskSpec | None] = []
        for k, target in enumerate(targets):
            where = f"conversion[{j}].output_target[{k}]"
            if not isinstance(target, dict) or target.get("type") != "amazons3":
                kind = target.get("type") if isinstance(target, dict) else None
                problems.append(f"{where}: type {kind!r} is not emulated (amazons3 is)")
                continue
            access = self._s3(target, where, problems)
            file = (target.get("parameters") or {}).get("file")
            if not file:
                problems.append(f"{where}.parameters.file is required")
            if access is not None and file:
                found.append(TaskSpec(f"output-{j}-{k}", "amazons3", ExportS3(access, file),
                                      target, (converted,)))
        return found

    def _s3(self, item: Mapping[str, Any], where: str, problems: list[str]) -> S3Access | None:
        parameters = item.get("parameters") or {}
        credentials = item.get("credentials") or {}
        missing = [f"parameters.{name}" for name in ("bucket",) if not parameters.get(name)]
        missing += [f"credentials.{name}" for name in ("accesskeyid", "secretaccesskey")
                    if not credentials.get(name)]
        problems.extend(f"{where}.{name} is required" for name in missing)
        if missing:
            return None
        return S3Access(bucket=parameters["bucket"],
                        region=parameters.get("region") or DEFAULT_REGION,
                        access_key_id=credentials["accesskeyid"],
                        secret_access_key=credentials["secretaccesskey"],
                        session_token=credentials.get("sessiontoken"),
                        endpoint=self._aws_endpoint())

    # -- rendering -----------------------------------------------------------------------------

    def render_job(self, job: Job) -> dict[str, Any]:
        with self._backend.lock:
            code, info = STATUS[job.status]
            tasks = {task.name: task for task in job.tasks}
            conversions = [t for t in job.tasks if t.name.startswith("conversion-")]
            return {
                "id": job.id,
                "token": self._tokens.get(job.id),
                "type": "job",
                "status": {"code": code, "info": info},
                "errors": [_error_entry(t) for t in job.tasks
                           if t.status == "error" and t.code != INPUT_TASK_FAILED],
                "warnings": [],
                "process": job.id not in self._held,
                "conversion": [{
                    "id": t.id, "target": t.payload.get("target"),
                    "category": t.payload.get("category"),
                    "options": t.payload.get("options") or {},
                    "output_target": [_hidden(o) for o in t.payload.get("output_target") or []],
                } for t in conversions],
                "input": [_input_entry(t) for t in job.tasks if t.name.startswith("input-")],
                "output": [entry for t in job.tasks if t.name.startswith("output-")
                           for entry in _output_entries(t, tasks)],
                "callback": job.webhook_url or "",
                "notify_status": False,
                "server": f"{self._base_url()}{self.prefix}",
                "created_at": job.created_at,
                "modified_at": job.ended_at or job.started_at or job.created_at,
            }

    # -- callback ------------------------------------------------------------------------------

    def build_callback(self, job: Job) -> Callback | None:
        if not job.webhook_url:
            return None
        event = "completed" if job.status == "finished" else "failed"
        body = json.dumps(self.render_job(job)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self._signing_secret is not None:
            headers[SIGNATURE_HEADER] = hmac.new(self._signing_secret, body,
                                                 hashlib.sha256).hexdigest()
        return Callback(url=job.webhook_url, event=event, body=body, retry=_worth_retrying,
                        headers=headers, timing=self._callback_timing)


def _worth_retrying(status: int | None) -> bool:
    """Timeouts, network errors and 5xx are retried; a 4xx answer is final."""
    return status is None or status >= 500


def _hidden(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "credentials"}


def _error_entry(task: Task) -> dict[str, Any]:
    return {"source": SOURCES[task.name.split("-", 1)[0]], "id": task.id,
            "code": ERROR_CODES.get(task.code or "", OTHER_ERROR), "message": task.message}


def _input_entry(task: Task) -> dict[str, Any]:
    files = task.result_files or []
    return {**_hidden(task.payload), "id": task.id,
            "status": {"finished": "ready", "error": "failed"}.get(task.status, "pending"),
            "size": files[0].size if files else None, "created_at": task.created_at}


def _output_entries(task: Task, tasks: Mapping[str, Task]) -> list[dict[str, Any]]:
    conversion = tasks["conversion-" + task.name.split("-")[1]]
    return [{
        "id": f"{task.id}-{number}",
        "source": {"conversion": conversion.id, "input": list(conversion.input_ids)},
        "uri": f.url, "filename": f.filename, "size": f.size, "status": "enabled",
        "created_at": task.ended_at,
    } for number, f in enumerate(task.result_files or []) if task.status == "finished"]
