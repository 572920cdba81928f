"""The CloudConvert API v1 (process API) dialect of the sandbox, mounted below /v1 beside v2 as
at CloudConvert. ``POST /v1/process`` (``apikey`` in the JSON body, the query or a bearer
header; ``inputformat``, ``outputformat``) answers a protocol-relative process URL; a ``POST``
to it starts the conversion (``input=download`` with ``file``; ``outputformat``,
``converteroptions``, ``filename``, ``tag``, ``callback``, ``save``; parameters may also be in
the query); a ``GET`` shows the status (steps input, convert, output, finished, error; a failed
conversion answers 400 for bad input and 422 for a conversion error, ``message`` saying why).
When the process ends the ``callback`` URL gets a ``GET ?id=&url=&step=`` (network errors and
5xx retried). Not emulated, and refused with a message saying so: other input methods
(upload, s3, azure, ...), output storages, ``wait``/``download``, modes other than convert.
Execution is in executor.py."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .backend import Backend
from .models import (
    IMPORT_FAILED,
    INPUT_TASK_FAILED,
    ApiRequest,
    ApiResponse,
    Callback,
    Convert,
    ExportUrl,
    ImportUrl,
    Job,
    Task,
    TaskSpec,
)

DIALECT = "cloudconvert/v1"
USER_AGENT = "CloudConvert-v1-Sandbox"
MAX_TIME_SECONDS = 18000
#: the step a running process is in, by the task that is running
STEP_OF_TASK = {"import": "input", "convert": "convert", "export": "output"}


@dataclass
class _Process:
    id: str
    inputformat: str
    outputformat: str
    created: float
    job_id: str | None = None
    tag: Any = None
    options: Mapping[str, Any] | None = None


def _json(status: int, payload: object) -> ApiResponse:
    return ApiResponse(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _error(status: int, message: str) -> ApiResponse:
    return _json(status, {"error": message, "code": status})


class CloudConvertV1:
    """Serves the CloudConvert API v1 below `prefix`."""

    def __init__(self, backend: Backend, *, api_key: str, base_url: Callable[[], str],
                 prefix: str = "/v1") -> None:
        self.prefix = prefix
        self._backend = backend
        self._api_key = api_key.encode()
        self._base_url = base_url
        self._processes: dict[str, _Process] = {}

    def handle(self, request: ApiRequest) -> ApiResponse:
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(request.query).items()}
        if request.body:
            try:
                body = json.loads(request.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return _error(400, "The request body is not valid JSON.")
            if not isinstance(body, dict):
                return _error(400, "The request body must be a JSON object.")
            params.update(body)
        match request.path[len(self.prefix):].strip("/").split("/"), request.method:
            case ["process"], "POST":
                return self._create(request, params)
            case ["process", process_id], "POST":
                return self._start(process_id, params)
            case ["process", process_id], "GET":
                return self._status(process_id)
            case ["process", _], _:
                return _error(405, "Not emulated by the convbridge sandbox.")
        return _error(404, "Not found.")

    def forget(self, process_id: str) -> str | None:
        """Delete a process; returns the id of its job, if it was started."""
        with self._backend.lock:
            process = self._processes.pop(process_id, None)
        return process.job_id if process is not None else None

    def _authorized(self, request: ApiRequest, params: Mapping[str, Any]) -> bool:
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        given = str(params.get("apikey") or (bearer if scheme.lower() == "bearer" else ""))
        return hmac.compare_digest(given.strip().encode(), self._api_key)

    def _create(self, request: ApiRequest, params: Mapping[str, Any]) -> ApiResponse:
        if not self._authorized(request, params):
            return _error(401, "Invalid API key.")
        faults = self._backend.faults
        rejection = self._backend.draw_rejection(faults)
        if rejection is not None:
            return ApiResponse(rejection, json.dumps({"error": "Try again later.",
                                                      "code": rejection}).encode(),
                               {"Content-Type": "application/json",
                                "Retry-After": str(faults.retry_after_seconds)})
        if self._backend.over_job_cap(DIALECT):
            return ApiResponse(429, json.dumps({"error": "Try again later.",
                                                "code": 429}).encode(),
                               {"Content-Type": "application/json",
                                "Retry-After": str(faults.retry_after_seconds)})
        missing = [name for name in ("inputformat", "outputformat") if not params.get(name)]
        if missing:
            return _error(400, f"{' and '.join(missing)} required.")
        if params.get("mode", "convert") != "convert":
            return _error(400, "Only mode=convert is emulated by the convbridge sandbox.")
        process = _Process(secrets.token_urlsafe(9).replace("-", "x").replace("_", "y"),
                           str(params["inputformat"]), str(params["outputformat"]), time.time())
        with self._backend.lock:
            self._processes[process.id] = process
        return self._backend.answer_created(_json(200, {
            "url": self._process_url(process.id), "id": process.id, "host": self._host(),
            "expires": time.strftime("%Y-%m-%d %H:%M:%S",
                                     time.gmtime(process.created + MAX_TIME_SECONDS)),
            "maxtime": MAX_TIME_SECONDS,
        }))

    def _start(self, process_id: str, params: Mapping[str, Any]) -> ApiResponse:
        with self._backend.lock:
            process = self._processes.get(process_id)
        if process is None:
            return _error(404, "Process not found.")
        if process.job_id is not None:
            return _error(400, "This process was already started; process IDs are for "
                               "one-time use.")
        problem = _start_problem(process, params)
        if problem:
            return _error(400, problem)
        options = params.get("converteroptions") or {}
        specs = [
            TaskSpec("import", "download", ImportUrl(params["file"], params.get("filename")),
                     {"input": "download"}),
            TaskSpec("convert", "convert", Convert(process.outputformat, process.inputformat,
                                                   options), {}, ("import",)),
            TaskSpec("export", "output", ExportUrl(), {}, ("convert",)),
        ]
        job = self._backend.create_job(DIALECT, specs, None, params.get("callback") or None)
        with self._backend.lock:
            process.job_id, process.tag, process.options = job.id, params.get("tag"), options
            rendered = self.render_process(process)
        self._backend.run(job, self.build_callback)
        return self._backend.answer_created(_json(200, rendered), may_hold=False)

    def _status(self, process_id: str) -> ApiResponse:
        with self._backend.lock:
            process = self._processes.get(process_id)
            if process is None:
                return _error(404, "Process not found.")
            rendered = self.render_process(process)
            job = self._backend.job(process.job_id) if process.job_id else None
            failure = _root_failure(job) if job is not None else None
        if rendered["step"] == "error" and self._backend.faults.host_unavailable_failures:
            return ApiResponse(503, json.dumps(rendered).encode(), {
                "Content-Type": "application/json",
                "Retry-After": str(self._backend.faults.retry_after_seconds)})
        if rendered["step"] == "error":
            return _json(400 if failure and failure.code == IMPORT_FAILED else 422, rendered)
        return _json(200, rendered)

    # -- rendering -----------------------------------------------------------------------------

    def _host(self) -> str:
        return urlsplit(self._base_url()).netloc

    def _process_url(self, process_id: str) -> str:
        return f"//{self._host()}{self.prefix}/process/{process_id}"

    def render_job(self, job: Job) -> dict[str, Any]:
        """The process whose conversion is ``job``, as its process URL shows it."""
        with self._backend.lock:
            process = next(p for p in self._processes.values() if p.job_id == job.id)
            return self.render_process(process)

    def render_process(self, process: _Process) -> dict[str, Any]:
        with self._backend.lock:
            job = self._backend.job(process.job_id) if process.job_id else None
            step, message, percent = _step(job)
            rendered: dict[str, Any] = {
                "id": process.id, "url": self._process_url(process.id), "percent": percent,
                "message": message, "step": step, "tag": process.tag,
                "starttime": int(process.created),
                "expire": int(process.created + MAX_TIME_SECONDS),
                "converter": {"format": process.outputformat,
                              "options": dict(process.options or {})},
            }
            if job is None:
                return rendered
            tasks = {task.name: task for task in job.tasks}
            imported = tasks["import"].result_files or []
            if imported:
                name = imported[0].filename
                rendered["input"] = {"type": "download", "filename": name,
                                     "size": imported[0].size,
                                     "name": name.rpartition(".")[0] or name,
                                     "ext": name.rpartition(".")[2]}
            exported = tasks["export"].result_files or []
            if step == "finished" and exported and exported[0].url:
                url = exported[0].url
                rendered["output"] = {
                    "filename": exported[0].filename,
                    "ext": exported[0].filename.rpartition(".")[2],
                    "size": exported[0].size,
                    # protocol-relative, as v1 writes every URL
                    "url": "//" + url.split("://", 1)[1], "downloads": 0,
                }
                rendered["endtime"] = int(time.time())
            return rendered

    # -- callback ------------------------------------------------------------------------------

    def build_callback(self, job: Job) -> Callback | None:
        if not job.webhook_url:
            return None
        with self._backend.lock:
            process = next((p for p in self._processes.values() if p.job_id == job.id), None)
        if process is None:
            return None
        step = "finished" if job.status == "finished" else "error"
        query = urlencode({"id": process.id, "url": self._process_url(process.id),
                           "step": step})
        joiner = "&" if "?" in job.webhook_url else "?"
        return Callback(url=f"{job.webhook_url}{joiner}{query}", event=step, body=b"",
                        headers={"User-Agent": USER_AGENT}, retry=_worth_retrying,
                        method="GET")


def _start_problem(process: _Process, params: Mapping[str, Any]) -> str | None:
    if params.get("input") != "download":
        return (f"input {params.get('input')!r} is not emulated by the convbridge sandbox "
                "(download is)")
    file = params.get("file")
    if not isinstance(file, str) or not file.startswith(("http://", "https://")):
        return "file must be the full URL (including http://) of the input file."
    if str(params.get("outputformat")) != process.outputformat:
        return "outputformat must be the one the process was created with."
    for unsupported in ("output", "wait", "download", "email"):
        if params.get(unsupported) not in (None, False, "false", ""):
            return f"{unsupported} is not emulated by the convbridge sandbox."
    options = params.get("converteroptions")
    if options is not None and not isinstance(options, dict):
        return "converteroptions must be an object."
    return None


def _step(job: Job | None) -> tuple[str, str, int]:
    """(step, message, percent) of a process whose conversion is ``job``."""
    if job is None:
        return "input", "Waiting for the process to be started", 0
    if job.status == "finished":
        return "finished", "Conversion finished!", 100
    if job.status == "error":
        failure = _root_failure(job)
        return "error", failure.message if failure and failure.message else "Error", 100
    running = next((t for t in job.tasks if t.status != "finished"), job.tasks[0])
    return STEP_OF_TASK[running.name], f"{running.name.capitalize()}...", 50


def _root_failure(job: Job) -> Task | None:
    failed = [t for t in job.tasks if t.status == "error"]
    return next((t for t in failed if t.code != INPUT_TASK_FAILED), failed[0] if failed else None)


def _worth_retrying(status: int | None) -> bool:
    """v1 retries network errors and answers >= 500 (up to 5 times, 5 s apart)."""
    return status is None or status >= 500
