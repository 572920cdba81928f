"""Online-Convert API v2 (api2convert): ``POST /jobs`` with ``input``, ``conversion`` and a
``callback`` URL, authenticated with ``X-Oc-Api-Key``; callbacks are unsigned.

S3 sources are read natively as ``cloud``/``amazons3`` inputs with an STS ``sessiontoken``
scoped to the one object, and S3 outputs written as an ``amazons3`` output target with a session
scoped to the job's output key; any other source is a ``remote`` input from a signed URL. Azure
output targets need the account key and GCS ones a key file, so those outputs are fetched from
the job's output URIs through the relay. The ``amazons3`` fields name no endpoint: native S3
means AWS itself (a rule on another S3 endpoint should import from a presigned URL). Online-
Convert may refuse to upload onto an existing name, so converting a source again while its
output exists can end in the provider's failure report rather than a replaced output.

Callbacks carry no signature, so the callback URL holds a per-job token (the signed job
context), and :meth:`OnlineConvert.confirm` fetches the job with the API key and acts only on
that answer, after checking that the job was created with the very same callback token. Of the
posted body only the job id is read, and only to know which job to fetch. The token can leak,
and its holder can create a job of their own with that callback URL, so jobs are built step by
step as the seed documents: created with ``process: false``, handed to the bridge to record,
and only then started with ``PATCH process: true``; a context is settled only by the job
recorded for it (``binds_before_start``), even when a callback comes before the create answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from convbridge.budget import ProviderLimits
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    ProviderError,
)
from convbridge.model import CallbackRequest, Grant, GrantKind, JobOutcome, JobSpec, OutputFile
from convbridge.providers.base import TOKEN_PARAMETER, Provider, parse_size, parse_time

API_KEY_HEADER = "X-Oc-Api-Key"
#: job status codes that settle a job; every other code means it is still on its way
FINAL_STATUSES = {"completed": "finished", "failed": "failed", "canceled": "failed"}
#: job ids are UUIDs; anything else in a callback is refused before it reaches a URL path
#: (matched whole with ``re.fullmatch``: ``$`` would let a trailing newline through)
_JOB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class OnlineConvert(Provider):
    name: ClassVar[str] = "onlineconvert"
    default_base_url: ClassVar[str | None] = "https://api.api2convert.com/v2"
    native_imports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "s3": frozenset({"presigned_url", "sts_session"}),
    }
    native_exports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {
        "s3": frozenset({"sts_session"}),
    }
    #: output ``uri``s point at the job's server (``www13.api2convert.com``); the service
    #: also serves files below its older online-convert.com domain
    download_hosts: ClassVar[tuple[str, ...]] = ("*.api2convert.com", "*.online-convert.com")
    binds_before_start: ClassVar[bool] = True
    #: a conservative guess: the seed (002) documents no limits at all; each job takes three
    #: or more requests (create, conversions, inputs, start)
    default_limits: ClassVar[ProviderLimits] = ProviderLimits(max_concurrent_jobs=3,
                                                              requests_per_second=5.0)
    #: callbacks are tried 10 times, 10 s apart: a job silent for an hour lost them all
    settle_deadline_seconds: ClassVar[int] = 3600

    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        conversion: dict[str, Any] = {"target": spec.conversion.output_format}
        if spec.conversion.options:
            conversion["options"] = dict(spec.conversion.options)
        if spec.route == "native" and spec.write_grant is not None:
            conversion["output_target"] = [_output_target(spec.write_grant, spec)]
        return {
            "input": [_input(spec.read_grant, spec.filename)],
            "conversion": [conversion],
            "callback": self._callback_url(spec),
            "notify_status": False,
        }

    def start(self, spec: JobSpec, on_created: Callable[[str], None] | None = None) -> str:
        """Create the job held (``process: false``), let ``on_created`` record its id, then
        process it. A held job neither runs nor calls back, so a lost create answer is not
        retried here: the job it may have made stays held."""
        return self._create_and_process(self.build_job(spec), on_created)

    def create_job(self, document: Mapping[str, Any]) -> str:
        """The job created and processed with no pause to record its id; the bridge submits
        through :meth:`start`."""
        return self._create_and_process(document, None)

    def _create_and_process(self, document: Mapping[str, Any],
                            on_created: Callable[[str], None] | None) -> str:
        response = self._send("POST", "/jobs", json={**document, "process": False},
                              headers=self._auth(), idempotent=False)
        try:
            job_id = str(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: job created but the answer has no id") from exc
        if not _JOB_ID.fullmatch(job_id):
            raise ProviderError(f"{self.name}: job created with an id that is not one")
        if on_created is not None:
            on_created(job_id)
        # asking twice to process a job is harmless, so this one may be retried
        self._send("PATCH", f"/jobs/{job_id}", json={"process": True}, headers=self._auth())
        return job_id

    def _auth(self) -> dict[str, str]:
        return {API_KEY_HEADER: self._api_key}

    def verify_callback(self, request: CallbackRequest) -> None:
        self._callback_token(request)

    def accept_callback(self, request: CallbackRequest) -> JobOutcome | None:
        """Provisional: only the job id and the URL's token are used, by :meth:`confirm`."""
        token = self._callback_token(request)
        outcome = self.parse_callback(request.body)
        return replace(outcome, context_token=token) if outcome else None

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        try:
            job = json.loads(body)
            job_id = job["id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CallbackError("callback body is not an Online-Convert job") from exc
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise CallbackError("callback names no valid Online-Convert job id")
        try:
            return parse_job(job)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CallbackError("callback body is not an Online-Convert job") from exc

    def confirm(self, outcome: JobOutcome, request: CallbackRequest) -> JobOutcome | None:
        response = self._send("GET", f"/jobs/{outcome.job_id}", headers=self._auth())
        try:
            job = response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.name}: job {outcome.job_id} answer is not JSON") from exc
        if not isinstance(job, dict) or job.get("id") != outcome.job_id:
            raise ProviderError(f"{self.name}: asked for job {outcome.job_id}, got another")
        # A token from one job's callback URL must not settle another job.
        if callback_token(job) != outcome.context_token:
            raise CallbackSignatureError("the job was not created with this callback token")
        try:
            return parse_job(job)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: job {outcome.job_id} is malformed") from exc


    def fetch_job(self, job_id: str) -> JobOutcome | None:
        if not _JOB_ID.fullmatch(job_id):
            raise ProviderError(f"{self.name}: {job_id!r} is not a job id")
        job = self._job_document(f"/jobs/{job_id}", headers=self._auth())
        if not isinstance(job, dict) or job.get("id") != job_id:
            raise ProviderError(f"{self.name}: asked for job {job_id}, got another answer")
        try:
            return parse_job(job)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: job {job_id} is malformed") from exc


def callback_token(job: Mapping[str, Any]) -> str | None:
    """The token in the callback URL the job was created with."""
    callback = job.get("callback")
    if not isinstance(callback, str):
        return None
    values = parse_qs(urlsplit(callback).query).get(TOKEN_PARAMETER, [])
    return values[0] if len(values) == 1 else None


def parse_job(job: Mapping[str, Any]) -> JobOutcome | None:
    """An Online-Convert job (``GET /jobs/{id}`` or a callback body) as a JobOutcome, or None
    while it has not ended."""
    shown = job.get("status")
    shown = shown if isinstance(shown, dict) else {}
    status_code = shown.get("code")
    status = FINAL_STATUSES.get(str(status_code))
    if status is None:
        return None
    errors = [e for e in job.get("errors") or [] if isinstance(e, dict)]
    first = errors[0] if errors else {}
    outputs = tuple(
        OutputFile(filename=str(o.get("filename", "")), size=parse_size(o.get("size")),
                   url=o["uri"] if isinstance(o.get("uri"), str) else None)
        for o in job.get("output") or [] if isinstance(o, dict)
    )
    failed = status == "failed"
    return JobOutcome(
        provider=OnlineConvert.name,
        job_id=str(job.get("id", "")),
        status="failed" if failed else "finished",
        context_token=callback_token(job),
        event=str(status_code),
        outputs=() if failed else outputs,
        failed_task=str(first.get("source") or "job") if failed else None,
        code=_error_code(first.get("code"), status_code) if failed else None,
        message=str(first.get("message") or shown.get("info") or "") if failed else None,
        started_at=parse_time(job.get("created_at")),
        ended_at=parse_time(job.get("modified_at")),
    )


def _error_code(code: Any, status_code: Any) -> str:
    """``errors[].code`` is an integer (the official SDK reads it as ``int | None``); records
    carry it as its decimal string, like every provider's code. An error without one, or with
    something else there, is reported under the job's status code (``failed``)."""
    if isinstance(code, int) and not isinstance(code, bool):
        return str(code)
    if isinstance(code, str) and code.strip():
        return code.strip()
    return str(status_code)


def _input(grant: Grant, filename: str) -> dict[str, Any]:
    if grant.kind == "presigned_url":  # any storage's signed URL
        return {"type": "remote", "source": grant.url, "filename": filename}
    if (grant.storage, grant.kind) == ("s3", "sts_session"):
        return {"type": "cloud", "source": "amazons3",
                "parameters": {"bucket": grant.location, "file": grant.key,
                               "region": grant.region},
                "credentials": _s3_credentials(grant), "filename": filename}
    raise ProviderError(f"onlineconvert cannot import a {grant.storage} {grant.kind} grant")


def _output_target(grant: Grant, spec: JobSpec) -> dict[str, Any]:
    if (grant.storage, grant.kind) != ("s3", "sts_session"):
        raise ProviderError(f"onlineconvert cannot export with a {grant.storage} "
                            f"{grant.kind} grant")
    return {"type": "amazons3",
            "parameters": {"bucket": grant.location, "file": spec.output.key,
                           "region": grant.region},
            "credentials": _s3_credentials(grant)}


def _s3_credentials(grant: Grant) -> dict[str, str]:
    return {"accesskeyid": grant.secret["access_key_id"],
            "secretaccesskey": grant.secret["secret_access_key"],
            "sessiontoken": grant.secret["session_token"]}
