"""The provider adapter contract: four abstract operations, the request/callback flow here.

An adapter turns a :class:`JobSpec` into the provider's job document, creates it, and turns a
callback back into a :class:`JobOutcome`. It declares which scoped grants it accepts natively
per storage (``native_imports`` / ``native_exports``) so the planner can choose native or relay
without knowing any provider.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from hashlib import sha256
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import httpx

from convbridge.budget import ProviderBudget, ProviderLimits, can_defer
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    ProviderBusy,
    ProviderError,
    ProviderJobUnknown,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
)
from convbridge.http import (
    RETRY_STATUSES,
    GaveUp,
    RetryPolicy,
    retry_after_seconds,
    seconds_left,
    send,
)
from convbridge.model import CallbackRequest, Grant, GrantKind, JobOutcome, JobSpec

logger = logging.getLogger(__name__)
#: create attempts whose answers were lost before giving up on a job
MAX_CREATE_ATTEMPTS = 5
#: the pause before looking for a job whose create answer was lost (at least Retry-After)
CREATE_RETRY = RetryPolicy()
#: the query parameter carrying the per-job token of dialects whose callbacks are not signed
TOKEN_PARAMETER = "token"


class Provider(ABC):
    """One conversion API dialect."""

    name: ClassVar[str]
    #: the API's public base URL; ``CONVBRIDGE_<NAME>_URL`` overrides it (a sandbox, a region)
    default_base_url: ClassVar[str | None] = None
    #: :meth:`upload_input` takes an input the bridge pushes (``upload`` read grants, for
    #: storages that cannot sign a URL); the planner refuses such a job to a provider without
    #: it (UPLOAD_UNSUPPORTED) before any job is built
    takes_uploads: ClassVar[bool] = False
    #: storage name -> grant kinds the provider's import task accepts without widening scope
    native_imports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {}
    #: storage name -> grant kinds the provider's export task accepts without widening scope
    native_exports: ClassVar[Mapping[str, frozenset[GrantKind]]] = {}
    #: hosts the relay may download this dialect's outputs from, over https: exact hosts and
    #: ``*.domain`` patterns (see convbridge.http.HostPattern); the base URL's host is added
    download_hosts: ClassVar[tuple[str, ...]] = ()
    #: The job is created first and started by a second request, so :meth:`start` hands its
    #: id to ``on_created`` before the job can run or call back. Dialects whose callbacks are
    #: unsigned need this: the bridge then settles a context only by the job recorded for it,
    #: whatever job a holder of the callback token starts on the same service.
    binds_before_start: ClassVar[bool] = False
    #: How long a job may stay ``submitted`` before the reconciler asks the provider about it:
    #: past the provider's own callback retries, well within how long it keeps the job and its
    #: outputs. A job still running then is asked again at the next run.
    settle_deadline_seconds: ClassVar[int] = 3 * 3600
    #: :meth:`find_job` can search the provider's jobs by the context token (its ``tag``), so
    #: a create whose answer was lost is looked up before it is sent again; without it such a
    #: create is reported (ProviderOutcomeUnknown), never sent twice
    finds_jobs: ClassVar[bool] = False
    #: Answers meaning "not now" (a rate or concurrent-jobs limit): they raise ProviderBusy.
    #: Where the event can wait elsewhere (convbridge.budget.can_defer) a job create meeting
    #: one is not retried inside the invocation, and the event is deferred
    #: (convbridge.backpressure). Every dialect documents 429.
    busy_statuses: ClassVar[frozenset[int]] = frozenset({429})
    #: The bridge's default for the provider ACCOUNT's limits, shared by the environments that
    #: run at once (convbridge.budget.environment_share; CONVBRIDGE_<NAME>_MAX_CONCURRENT_JOBS
    #: and _REQUESTS_PER_SECOND override it). The seeds document no numbers for any provider:
    #: each adapter says what its document gives, and its default is a conservative guess.
    default_limits: ClassVar[ProviderLimits] = ProviderLimits(max_concurrent_jobs=5,
                                                              requests_per_second=5.0)

    def __init__(
        self,
        *,
        api_key: str,
        signing_secret: str | None,
        base_url: str,
        http: httpx.Client,
        budget: ProviderBudget | None = None,
    ) -> None:
        self._api_key = api_key
        self._signing_secret = signing_secret
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._budget = budget

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @abstractmethod
    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        """The provider's job document for ``spec``; pure, no I/O."""

    @abstractmethod
    def create_job(self, document: Mapping[str, Any]) -> str:
        """Send the job document; return the provider's job id."""

    @abstractmethod
    def verify_callback(self, request: CallbackRequest) -> None:
        """Raise CallbackSignatureError unless the callback is genuine."""

    @abstractmethod
    def parse_callback(self, body: bytes) -> JobOutcome | None:
        """The outcome a verified callback reports, or None for events that need no action."""

    def find_job(self, context_token: str) -> str | None:
        """The id of a job created with ``context_token``, or None when there is none.
        Used after a create request whose answer was lost, so a retry never makes a second
        job; only called where ``finds_jobs``."""
        return None

    def fetch_job(self, job_id: str) -> JobOutcome | None:
        """The job's outcome as the provider shows it to our API key, or None while it runs;
        ProviderJobUnknown when the provider no longer knows the job. Used by the reconciler
        for jobs whose callbacks never came."""
        raise ProviderError(f"{self.name} cannot look a job up")

    def start(self, spec: JobSpec, on_created: Callable[[str], None] | None = None) -> str:
        """Create the job for ``spec`` and return its id, which ``on_created`` learns first:
        before the job can run in dialects that ``binds_before_start``, as soon as the create
        request answers in the others (whose job may already have called back)."""
        document = self.build_job(spec)
        if self._budget is None:
            job_id = self._create(document, spec.context_token)
        else:
            with self._budget.job_slot():
                job_id = self._create(document, spec.context_token)
        if on_created is not None:
            on_created(job_id)
        return job_id

    def _create(self, document: Mapping[str, Any], context_token: str) -> str:
        """Create the job; after an answer that leaves its fate unknown, wait what the provider
        asked, look the job up by its context and send the create again only when there is
        none. A provider that cannot search gets the create once (ProviderOutcomeUnknown)."""
        for attempt in range(MAX_CREATE_ATTEMPTS):
            try:
                return self.create_job(document)
            except ProviderOutcomeUnknown as exc:
                if not self.finds_jobs:
                    raise
                wait = max(exc.retry_after or 0.0, CREATE_RETRY.backoff(attempt))
                if wait > seconds_left():
                    raise ProviderUnavailable(f"{self.name}: {exc}; no time is left to look "
                                              "for the job and try again",
                                              status=exc.status) from exc
                time.sleep(wait)
                found = self.find_job(context_token)
                if found:
                    logger.info("%s: %s; found job %s it created", self.name, exc, found)
                    return found
                logger.info("%s: %s; no job was created, trying again", self.name, exc)
                last = exc
        raise ProviderUnavailable(f"{self.name}: {last}; no job was created in "
                                  f"{MAX_CREATE_ATTEMPTS} attempts", status=last.status) from last

    def upload_input(self, job_id: str, spec: JobSpec,
                     open_stream: Callable[[], Iterator[bytes]]) -> None:
        """Push the input of ``job_id`` (created for an ``upload`` read grant) to the provider.
        ``open_stream`` gives the bytes from the start each time it is called."""
        raise ProviderRejected(f"{self.name} cannot take an input uploaded by the bridge",
                               code="UPLOAD_UNSUPPORTED")

    def accept_callback(self, request: CallbackRequest) -> JobOutcome | None:
        self.verify_callback(request)
        return self.parse_callback(request.body)

    def confirm(self, outcome: JobOutcome, request: CallbackRequest) -> JobOutcome | None:
        """The outcome to act on for an accepted callback whose context verified. Signed
        dialects return ``outcome``; dialects whose callbacks are unsigned fetch the job from
        the provider with the API key and return what the provider says (None while the job
        has not ended), never what the caller posted."""
        return outcome

    # helpers shared by the dialects

    def _job_document(self, path: str, **kwargs: Any) -> Any:
        """The JSON a job lookup answers; a 404 (the job is gone) is ProviderJobUnknown."""
        try:
            response = self._send("GET", path, **kwargs)
        except ProviderRejected as exc:
            if exc.status == 404:
                raise ProviderJobUnknown(exc.message, status=404, code=exc.code) from exc
            raise
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderError(f"{self.name}: the job lookup answer is not JSON") from exc

    def _verify_hmac_hex(self, request: CallbackRequest, header: str) -> None:
        """Check a lowercase-hex HMAC-SHA256 of the exact raw body, in constant time."""
        if not self._signing_secret:
            raise CallbackSignatureError(f"{self.name}: no signing secret configured")
        given = request.header(header)
        if not given:
            raise CallbackSignatureError(f"missing {header} header")
        expected = hmac.new(self._signing_secret.encode(), request.body,
                            sha256).hexdigest().encode()
        # bytes on both sides: a non-ASCII header value simply does not match
        if not hmac.compare_digest(expected, comparable_bytes(given.strip().lower())):
            raise CallbackSignatureError(f"{header} does not match the body")

    def _callback_url(self, spec: JobSpec) -> str:
        """The webhook URL with the job's token: the signed context, unguessable (it holds a
        random nonce and our HMAC) and verifiable without state."""
        joiner = "&" if "?" in spec.webhook_url else "?"
        return f"{spec.webhook_url}{joiner}{urlencode({TOKEN_PARAMETER: spec.context_token})}"

    def _callback_token(self, request: CallbackRequest) -> str:
        """The token of an unsigned callback; its HMAC is checked by the pipeline next."""
        token = request.parameters().get(TOKEN_PARAMETER)
        if not token:
            raise CallbackSignatureError(f"{self.name}: the callback URL carries no token")
        return token

    def _send(self, method: str, path: str, *, idempotent: bool = True,
              **kwargs: Any) -> httpx.Response:
        """One request with retries; provider answers become ProviderRejected (4xx) or
        ProviderUnavailable (retries exhausted). An absolute URL (a CloudConvert v1 process
        URL) is sent as it is. A "not now" answer (``busy_statuses``) to a create raises
        ProviderBusy; where the event can be deferred it does so at once, so the event waits
        outside the invocation instead of retrying inside it."""
        url = path if "://" in path else f"{self.base_url}{path}"
        if self._budget is not None:
            self._budget.pace()
        if not idempotent and can_defer():
            kwargs.setdefault("retry_statuses", RETRY_STATUSES - self.busy_statuses)
        try:
            response = send(self._http, method, url, idempotent=idempotent, **kwargs)
        except GaveUp as exc:
            detail = f" ({_error_message(exc.response)})" if exc.response is not None else ""
            raise ProviderUnavailable(
                f"{self.name}: {exc}{detail}",
                status=exc.response.status_code if exc.response is not None else None,
            ) from exc
        if response.status_code == 429 and self._budget is not None:
            # over the rate: every request sent before the Retry-After is refused and counted
            # (a job-cap answer such as CloudConvert's 402 only defers its own upload)
            self._budget.hold(retry_after_seconds(response.headers.get("Retry-After")))
        if not idempotent and response.status_code in self.busy_statuses:
            raise ProviderBusy(f"{self.name}: {_error_message(response)}",
                               status=response.status_code,
                               retry_after=retry_after_seconds(
                                   response.headers.get("Retry-After")))
        if response.status_code >= 500:
            raise ProviderUnavailable(f"{self.name}: {_error_message(response)}",
                                      status=response.status_code)
        if response.status_code >= 400:
            raise ProviderRejected(
                f"{self.name}: {_error_message(response)}",
                status=response.status_code,
                code=_error_code(response),
            )
        return response


#: what the tagged-jobs flow asks of ``jobs_path``: create a job, or find one by its tag
JobsRequest = Literal["create", "find"]


class TaggedJobsProvider(Provider):
    """A dialect whose jobs are created by posting the job document to ``jobs_path`` and
    listed there by ``tag`` (the context token): the flow is here, an adapter names where
    its answers keep the id and the list, and how it authenticates (:meth:`_jobs_request`)."""

    #: jobs are listed by tag, so a lost create answer is looked up before a re-send
    finds_jobs: ClassVar[bool] = True
    jobs_path: ClassVar[str] = "/jobs"
    #: the fields leading to the new job's id in the create answer
    created_id_at: ClassVar[tuple[str, ...]] = ("id",)
    #: the fields leading to the list of jobs in the list answer
    listed_jobs_at: ClassVar[tuple[str, ...]] = ("data",)
    #: the list query parameter that filters jobs by tag
    tag_parameter: ClassVar[str] = "tag"

    def create_job(self, document: Mapping[str, Any]) -> str:
        response = self._jobs_request("create", "POST", json=document, idempotent=False)
        try:
            return str(_field(response.json(), self.created_id_at))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: job created but the answer has no "
                                f"{'.'.join(self.created_id_at)}") from exc

    def find_job(self, context_token: str) -> str | None:
        # the context token is unique per submission, so at most one job carries it
        response = self._jobs_request("find", "GET",
                                      params={self.tag_parameter: context_token, "per_page": 1})
        try:
            jobs = _field(response.json(), self.listed_jobs_at)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{self.name}: job list answer has no "
                                f"{'.'.join(self.listed_jobs_at)}") from exc
        matching = [j for j in jobs if isinstance(j, dict) and j.get("tag") == context_token]
        return str(matching[0]["id"]) if matching else None

    def _jobs_request(self, purpose: JobsRequest, method: str, **kwargs: Any) -> httpx.Response:
        """The request to ``jobs_path`` for ``purpose``; a dialect whose API keys have scopes
        names the one each purpose needs."""
        return self._send(method, self.jobs_path, headers=self._auth(), **kwargs)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}


def _field(document: Any, path: tuple[str, ...]) -> Any:
    """``document[path[0]][path[1]]...``; KeyError or TypeError where the answer lacks one."""
    for name in path:
        document = document[name]
    return document


def parse_size(value: Any) -> int | None:
    """A byte count from a provider document (a number or its digits), or None."""
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def comparable_bytes(value: str) -> bytes:
    """A caller's text (a header value, a query parameter) as bytes for a constant-time
    comparison. Whatever the caller sent encodes (lone surrogates from a hostile event become
    "?"), so a comparison answers "no match" instead of raising."""
    return value.encode("utf-8", errors="replace")


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """A callback body as a JSON object, or CallbackError (400) naming ``what`` it should have
    been: invalid UTF-8, nesting deep enough to exhaust the parser, and documents that are
    not objects are one refusal, never an exception out of the handler."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise CallbackError(f"callback body is not {what}: {type(exc).__name__}") from exc
    if not isinstance(document, dict):
        raise CallbackError(f"callback body is not {what}: a JSON {type(document).__name__}")
    return document


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from a provider document, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_message(response: httpx.Response) -> str:
    body = _json_or_none(response)
    if isinstance(body, dict):
        for field in ("message", "msg", "error"):
            if isinstance(body.get(field), str):
                return str(body[field])
    return response.text[:500] or response.reason_phrase


def _error_code(response: httpx.Response) -> str | None:
    body = _json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return str(body["code"])
    return None


def native_task(tables: Mapping[tuple[str, str], Callable[..., dict[str, Any]]], grant: Grant,
                provider: str, *args: Any) -> dict[str, Any]:
    """The task a provider's capability table builds for ``grant`` (keyed on storage and grant
    kind); a grant the table lacks is a bug in the planner, reported as a ProviderError."""
    try:
        build = tables[(grant.storage, grant.kind)]
    except KeyError:
        raise ProviderError(f"{provider} has no task for a {grant.storage} {grant.kind} "
                            "grant") from None
    return build(grant, *args)
