"""CloudConvert API v2: jobs of named tasks, ``{"data": ...}`` envelopes, signed webhooks.

Native routes: ``import/s3`` and ``export/s3`` take an STS ``session_token``, so S3 objects
are read and written by CloudConvert with credentials scoped to the one object and the job's
output key. Anything else imports from a presigned URL (``import/url``) and exports to
CloudConvert's own download URL (``export/url``) for the relay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from convbridge.errors import CallbackError, ProviderError
from convbridge.model import Grant, JobOutcome, JobSpec, OutputFile
from convbridge.providers.base import Provider
from convbridge.storage.base import OUTPUT_MARKER

SIGNATURE_HEADER = "CloudConvert-Signature"
IMPORT_TASK = "import-source"
CONVERT_TASK = "convert"
EXPORT_TASK = "export-output"
#: events that settle a job; ``job.created`` and task events need no action
FINAL_EVENTS = {"job.finished": "finished", "job.failed": "failed"}


class CloudConvert(Provider):
    name: ClassVar[str] = "cloudconvert"
    native_imports: ClassVar[Mapping[str, frozenset[str]]] = {
        "s3": frozenset({"presigned_url", "sts_session"}),
    }
    native_exports: ClassVar[Mapping[str, frozenset[str]]] = {
        "s3": frozenset({"sts_session"}),
    }

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

    def create_job(self, document: Mapping[str, Any]) -> str:
        response = self._send("POST", "/jobs", json=document, headers=self._auth(),
                              idempotent=False)
        try:
            return str(response.json()["data"]["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: job created but the answer has no data.id") from exc

    def find_job(self, context_token: str) -> str | None:
        # the context token is unique per submission, so at most one job carries it
        response = self._send("GET", "/jobs", headers=self._auth(),
                              params={"filter[tag]": context_token, "per_page": 1})
        try:
            jobs = response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: job list answer has no data") from exc
        matching = [j for j in jobs if isinstance(j, dict) and j.get("tag") == context_token]
        return str(matching[0]["id"]) if matching else None

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    def verify_callback(self, headers: Mapping[str, str], body: bytes) -> None:
        self._verify_hmac_hex(headers, SIGNATURE_HEADER, body)

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        try:
            document = json.loads(body)
            event = document["event"]
            job = document["job"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CallbackError("callback body is not a CloudConvert webhook") from exc
        if event not in FINAL_EVENTS:
            return None
        return parse_job(job, event=event)


def parse_job(job: Mapping[str, Any], *, event: str = "") -> JobOutcome:
    """A CloudConvert job object (from a webhook or ``GET /v2/jobs/{id}``) as a JobOutcome."""
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
                                          size=_int(file.get("size")), url=file.get("url")))
    return JobOutcome(
        provider=CloudConvert.name,
        job_id=str(job.get("id", "")),
        status="failed" if status == "failed" else "finished",
        context_token=job.get("tag"),
        event=event,
        outputs=tuple(outputs),
        failed_task=(root.get("name") or root.get("operation")) if root else None,
        code=root.get("code") if root else None,
        message=root.get("message") if root else None,
        started_at=_time(job.get("started_at")),
        ended_at=_time(job.get("ended_at")),
    )


def _import_task(grant: Grant, filename: str) -> dict[str, Any]:
    if grant.kind == "presigned_url":  # any storage's signed URL
        return {"operation": "import/url", "url": grant.url, "filename": filename}
    try:
        build = IMPORT_TASKS[(grant.storage, grant.kind)]
    except KeyError:
        raise ProviderError(f"cloudconvert cannot import a {grant.storage} "
                            f"{grant.kind} grant") from None
    return {**build(grant), "filename": filename}


def _export_task(spec: JobSpec) -> dict[str, Any]:
    grant = spec.write_grant
    if spec.route == "relay" or grant is None:
        return {"operation": "export/url", "input": CONVERT_TASK}
    try:
        build = EXPORT_TASKS[(grant.storage, grant.kind)]
    except KeyError:
        raise ProviderError(f"cloudconvert cannot export with a {grant.storage} "
                            f"{grant.kind} grant") from None
    return {**build(grant, spec), "input": CONVERT_TASK}


def _import_s3(grant: Grant) -> dict[str, Any]:
    task = {"operation": "import/s3", "bucket": grant.location, "region": grant.region,
            "key": grant.key, **_s3_credentials(grant)}
    if grant.endpoint:
        task["endpoint"] = grant.endpoint
    return task


def _export_s3(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    task = {"operation": "export/s3", "bucket": grant.location, "region": grant.region,
            "key": spec.output.key, "metadata": {OUTPUT_MARKER: spec.rule},
            **_s3_credentials(grant)}
    if grant.endpoint:
        task["endpoint"] = grant.endpoint
    return task


#: (storage, grant kind) -> the task that imports with it natively
IMPORT_TASKS: dict[tuple[str, str], Callable[[Grant], dict[str, Any]]] = {
    ("s3", "sts_session"): _import_s3,
}
#: (storage, grant kind) -> the task that exports with it natively
EXPORT_TASKS: dict[tuple[str, str], Callable[[Grant, JobSpec], dict[str, Any]]] = {
    ("s3", "sts_session"): _export_s3,
}


def _s3_credentials(grant: Grant) -> dict[str, str]:
    return {
        "access_key_id": grant.secret["access_key_id"],
        "secret_access_key": grant.secret["secret_access_key"],
        "session_token": grant.secret["session_token"],
    }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
