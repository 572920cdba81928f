"""CloudConvert API v1, the legacy process API, for self-hosted and compatible services (the
provider itself turned v1 off on 2022-01-01).

A job is a process: ``POST /process`` (``apikey``, ``inputformat``, ``outputformat``) creates
one, and a ``POST`` to its process URL starts it with ``input=download`` from a signed URL. The
output is fetched from ``output.url`` by the relay. When the process ends the service calls
``GET <callback>?id=&url=&step=``: nothing in that call is signed, so the callback URL carries a
per-job token (the signed job context, also sent as the process ``tag``). That token can leak,
and anyone holding it can start a process of their own with it as the tag, so:

* the process id is handed to the bridge between the two POSTs, before the process can run, and
  a context is settled only by the process recorded for it (``binds_before_start``);
* process URLs are followed only at ``<base URL>/process/<id>``, exactly the service's own
  scheme, host and port: the create answer must name that URL, and :meth:`CloudConvertV1.confirm`
  reads the process there, never wherever the callback's ``url`` points, and acts only on what
  the process says after checking that it carries the same token. As the seed documents, a
  process URL is read without the API key (the URL is the capability).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from convbridge.budget import ProviderLimits
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    ProviderError,
    ProviderJobUnknown,
    ProviderUnavailable,
)
from convbridge.http import GaveUp, RetryPolicy, send
from convbridge.model import CallbackRequest, JobOutcome, JobSpec, OutputFile
from convbridge.providers.base import Provider, parse_size, parse_time

#: callback steps that settle a process; the service calls back only for these
FINAL_STEPS = {"finished": "finished", "error": "failed"}
#: answers a process URL gives for a failed conversion, and the stage each blames (seed: 400
#: parameters missing or wrong, 422 the conversion failed, 503 no conversion host was available
#: or it failed); the status code is the only error code v1 has
FAILURE_STATUSES = {400: "input", 422: "convert", 503: "convert"}
#: A process URL is one-time: its 503 reports the conversion's end, asking again cannot help.
#: Throttling answers 429 (or a 503 without a process document, an outage to retry later).
PROCESS_READ_RETRY_STATUSES = frozenset({429, 502, 504})
#: process ids as the service makes them; matched whole (``re.fullmatch``: ``$`` would let a
#: trailing newline through to a URL)
_PROCESS_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CloudConvertV1(Provider):
    """Imports from a signed URL and exports through the relay for every storage."""

    name: ClassVar[str] = "cloudconvert_v1"
    default_base_url: ClassVar[str | None] = "https://api.cloudconvert.com/v1"
    #: ``output.url`` is on the process host (``//srv01.cloudconvert.com/download/...``); a
    #: compatible service serves outputs from its base URL's host, which is always allowed
    download_hosts: ClassVar[tuple[str, ...]] = ("*.cloudconvert.com",)
    binds_before_start: ClassVar[bool] = True
    #: a conservative guess: the seed (001, status codes) documents throttling as 429/503 with
    #: Retry-After and asks for exponential backoff, with no numbers
    default_limits: ClassVar[ProviderLimits] = ProviderLimits(max_concurrent_jobs=3,
                                                              requests_per_second=5.0)
    #: the callback is retried 5 times, 5 s apart; a process still running (up to its
    #: ``maxtime``) is simply asked again at the next run
    settle_deadline_seconds: ClassVar[int] = 3600

    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        if spec.read_grant.kind != "presigned_url":
            raise ProviderError(f"cloudconvert_v1 imports only from a signed URL, not a "
                                f"{spec.read_grant.storage} {spec.read_grant.kind} grant")
        document: dict[str, Any] = {
            "inputformat": spec.conversion.input_format,
            "outputformat": spec.conversion.output_format,
            "input": "download",
            "file": spec.read_grant.url,
            "filename": spec.filename,
            "tag": spec.context_token,
            "callback": self._callback_url(spec),
            "wait": False,
            # unsaved outputs are deleted after the first download; the relay may need two
            "save": True,
        }
        if spec.conversion.options:
            document["converteroptions"] = dict(spec.conversion.options)
        return document

    def start(self, spec: JobSpec, on_created: Callable[[str], None] | None = None) -> str:
        """Create the process, let ``on_created`` record its id, and only then start it: until
        the second POST the process cannot run, so it cannot call back unrecorded. A lost
        create answer is not retried here: the process it may have made never starts."""
        return self._create_and_start(self.build_job(spec), on_created)

    def create_job(self, document: Mapping[str, Any]) -> str:
        """The job created and started with no pause to record its id; the bridge submits
        through :meth:`start`."""
        return self._create_and_start(document, None)

    def _create_and_start(self, document: Mapping[str, Any],
                          on_created: Callable[[str], None] | None) -> str:
        created = self._send("POST", "/process", idempotent=False, json={
            "apikey": self._api_key, "inputformat": document["inputformat"],
            "outputformat": document["outputformat"]})
        try:
            process = created.json()
            process_id, named_url = str(process["id"]), str(process["url"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: process created but the answer has no id and "
                                "url") from exc
        if not _PROCESS_ID.fullmatch(process_id):
            raise ProviderError(f"{self.name}: process created with an id that is not one")
        process_url = self.process_url(process_id)
        if self.provider_url(named_url) != process_url:
            raise ProviderError(f"{self.name}: the process URL is not {process_url} on the "
                                "service's own host")
        if on_created is not None:
            on_created(process_id)
        # one-time: whatever answers, this URL is never POSTed again
        self._send("POST", process_url, json=dict(document), idempotent=False,
                   policy=RetryPolicy(max_attempts=1))
        return process_id

    def process_url(self, process_id: str) -> str:
        """Where the service shows the process: the only URL the adapter reads it from."""
        return f"{self.base_url}/process/{quote(process_id, safe='')}"

    def provider_url(self, url: str) -> str | None:
        """``url`` (process URLs are protocol-relative) made absolute, or None unless it is on
        exactly the base URL's scheme, host and port, without credentials, query or fragment.
        A sibling host of the service's domain is refused too: platforms hand out subdomains
        to anyone, and the callback's ``url`` must never send us elsewhere."""
        base = urlsplit(self.base_url)
        absolute = f"{base.scheme}:{url}" if url.startswith("//") else url
        try:
            parts = urlsplit(absolute)
            same_origin = (parts.scheme, parts.hostname, parts.port) == (
                base.scheme, base.hostname, base.port)
        except ValueError:  # a port that is not a number
            return None
        if (not same_origin or not parts.hostname or parts.username is not None
                or parts.password is not None or parts.query or parts.fragment):
            return None
        return f"{base.scheme}://{base.netloc}{parts.path}"

    def verify_callback(self, request: CallbackRequest) -> None:
        self._callback_token(request)

    def accept_callback(self, request: CallbackRequest) -> JobOutcome | None:
        """Provisional, from the GET query alone: :meth:`confirm` decides what happened."""
        token = self._callback_token(request)
        query = request.parameters()
        process_id, step = query.get("id", ""), query.get("step", "")
        if not _PROCESS_ID.fullmatch(process_id):
            raise CallbackError("callback names no valid process id")
        # A callback pointing anywhere but the service's URL for the process is not the
        # service's: refused here, before it could be queued or anything is requested.
        if self.provider_url(query.get("url", "")) != self.process_url(process_id):
            raise CallbackSignatureError("the callback's process URL is not the service's "
                                         "URL for that process")
        if step not in FINAL_STEPS:
            return None
        return JobOutcome(provider=self.name, job_id=process_id,
                          status="failed" if FINAL_STEPS[step] == "failed" else "finished",
                          context_token=token, event=step)

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        """A process status document (what the callback's process URL answers)."""
        try:
            return self.parse_process(json.loads(body), http_status=200)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CallbackError("not a CloudConvert v1 process document") from exc

    def confirm(self, outcome: JobOutcome, request: CallbackRequest) -> JobOutcome | None:
        # Read where the service shows the process the callback names, which is the URL the
        # create answer named (accept_callback refused a callback pointing anywhere else).
        url = self.process_url(outcome.job_id)
        try:
            response = send(self._http, "GET", url, idempotent=True,
                            retry_statuses=PROCESS_READ_RETRY_STATUSES)
        except GaveUp as exc:
            raise ProviderUnavailable(f"{self.name}: {exc}") from exc
        try:
            process = response.json()
        except ValueError:
            process = None
        if response.status_code >= 500 and not (
                response.status_code in FAILURE_STATUSES and isinstance(process, dict)):
            raise ProviderUnavailable(f"{self.name}: process answer HTTP "
                                      f"{response.status_code}", status=response.status_code)
        if not isinstance(process, dict) or (
                response.status_code >= 400 and response.status_code not in FAILURE_STATUSES):
            # an unknown process: asking again will not make it known
            raise CallbackError(f"the process URL answered HTTP {response.status_code}")
        # The token of one process's callback URL must not settle another process.
        if process.get("id") != outcome.job_id or process.get("tag") != outcome.context_token:
            raise CallbackSignatureError("the process was not started with this callback token")
        try:
            return self.parse_process(process, http_status=response.status_code)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: process {outcome.job_id} is malformed") from exc

    def fetch_job(self, job_id: str) -> JobOutcome | None:
        """The process read at its process URL, which is the capability (no API key)."""
        if not _PROCESS_ID.fullmatch(job_id):
            raise ProviderError(f"{self.name}: {job_id!r} is not a process id")
        try:
            response = send(self._http, "GET", self.process_url(job_id), idempotent=True)
        except GaveUp as exc:
            raise ProviderUnavailable(f"{self.name}: {exc}") from exc
        if response.status_code >= 500:
            raise ProviderUnavailable(f"{self.name}: process answer HTTP "
                                      f"{response.status_code}", status=response.status_code)
        if response.status_code == 404:
            raise ProviderJobUnknown(f"{self.name}: process {job_id} is not known", status=404)
        try:
            process = response.json()
        except ValueError:
            process = None
        if not isinstance(process, dict) or process.get("id") != job_id or (
                response.status_code >= 400 and response.status_code not in FAILURE_STATUSES):
            raise ProviderError(f"{self.name}: process {job_id} answered HTTP "
                                f"{response.status_code} without its status")
        try:
            return self.parse_process(process, http_status=response.status_code)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"{self.name}: process {job_id} is malformed") from exc

    def parse_process(self, process: Mapping[str, Any], *, http_status: int) -> JobOutcome | None:
        """A process status as a JobOutcome, or None while it runs."""
        step = process.get("step")
        failed = step == "error" or http_status in FAILURE_STATUSES
        if not failed and step != "finished":
            return None
        outputs: list[OutputFile] = []
        output = process.get("output")
        output = output if isinstance(output, dict) else {}
        url = output.get("url")
        if not failed and isinstance(url, str):
            absolute = f"{urlsplit(self.base_url).scheme}:{url}" if url.startswith("//") else url
            # several files come as one zip at url, each file alone at url/<file>
            files = [str(f) for f in output.get("files") or []]
            outputs = [OutputFile(filename=f, url=f"{absolute}/{quote(f)}") for f in files] or [
                OutputFile(filename=str(output.get("filename", "")),
                           size=parse_size(output.get("size")), url=absolute)]
        tag = process.get("tag")
        return JobOutcome(
            provider=self.name,
            job_id=str(process.get("id", "")),
            status="failed" if failed else "finished",
            context_token=tag if isinstance(tag, str) else None,
            event=str(step),
            outputs=tuple(outputs),
            failed_task=FAILURE_STATUSES.get(http_status, str(step)) if failed else None,
            code=str(http_status if http_status >= 400 else step) if failed else None,
            message=str(process.get("message") or "") if failed else None,
            started_at=_time(process.get("starttime")),
            ended_at=_time(process.get("endtime")),
        )


def _time(value: Any) -> datetime | None:
    """v1 writes times as epoch seconds (process status) or "2013-01-07 23:03:53" (lists)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return parse_time(value)
