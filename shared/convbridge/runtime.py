"""What the Lambda handlers share: the cold-start Bridge, event routing, raw request bodies,
queue hand-offs and logging set-up.

The handlers in ``functions/*/app.py`` hold wiring only; each calls one function here.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from convbridge.bridge import Bridge
from convbridge.errors import CallbackError, ConvbridgeError
from convbridge.events import ParsedEvents
from convbridge.http import deadline_from
from convbridge.pipeline import Submission, accept, complete, settle, submit_all
from convbridge.providers.base import CALLBACK_QUERY, parse_json_object

logger = logging.getLogger(__name__)

#: Vendor loggers that print credentials at DEBUG (botocore logs Secrets Manager response
#: bodies; httpx/httpcore log request URLs, which carry presigned signatures).
CHATTY_VENDOR_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore",
                         "azure", "google", "paramiko")
#: SQS delivers a message this many times before the redrive policy moves it to the DLQ; on
#: the last delivery a transient failure is reported instead of retried (template.yaml).
MAX_RECEIVES = 5
#: SQS messages stop at 256 KiB; larger callbacks are settled before answering.
MAX_QUEUED_BODY = 180 * 1024


#: records of one batch handled at once; SQS batches for the triggers are 10 at most
RECORD_WORKERS = 16


@functools.cache
def _record_workers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=RECORD_WORKERS, thread_name_prefix="convbridge-record")


class RetryLater(Exception):
    """Raised inside a batch record handler so the batch processor reports the record as a
    failure and SQS delivers it again."""


@functools.cache
def bridge() -> Bridge:
    """Built on the first invocation, then reused for the life of the execution environment."""
    return Bridge.from_env()


_Report = TypeVar("_Report")


def run_scheduled(event: Mapping[str, Any], context: Any, what: str,
                  job: Callable[[Bridge, Callable[[], int] | None], _Report]) -> _Report:
    """What every scheduled function does around its ``job``: the cold-start Bridge, claims
    that expire with the invocation, one line naming what started it, and the invocation's
    deadline; ``job`` gets the bridge and the remaining-time clock."""
    current = bridge()
    current.claims.register_lambda_context(context)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    logger.info("%s started by %s at %s", what, event.get("detail-type", "a direct call"),
                event.get("time", "?"))
    with deadline_from(remaining):
        return job(current, remaining)


def route_library_logs(powertools_logger: Any) -> None:
    """Send convbridge's own log records through the handler's structured logger, and keep
    vendor libraries at WARNING even when someone turns the root logger to DEBUG."""
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    for name in CHATTY_VENDOR_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("convbridge").setLevel(powertools_logger.log_level)
    copy_config_to_registered_loggers(source_logger=powertools_logger, include={"convbridge"})


def raw_body(event: Mapping[str, Any]) -> bytes:
    """The request body exactly as the caller sent it: signatures are over these bytes, never
    over re-serialised JSON. A body marked base64 that is not base64 is CallbackError (400)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return strict_base64(str(body), "the body")
    # "surrogatepass": whatever a JSON event string holds becomes bytes, to be refused later
    return str(body).encode("utf-8", errors="surrogatepass")


def request_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """An HTTP event's headers with lower-case names, as strings whatever the event held."""
    headers = event.get("headers")
    if not isinstance(headers, Mapping):
        return {}
    return {str(name).lower(): str(value) for name, value in headers.items()}


def refusal(exc: CallbackError) -> tuple[int, str]:
    """The answer to a refused request: its status, and only the kind of refusal (the caller
    may be hostile; the log line has the reason)."""
    return exc.status, json.dumps({"error": type(exc).__name__})


def internal_error(what: str) -> tuple[int, str]:
    """The last resort for a failure nobody foresaw: logged with its traceback, answered 500
    so the caller retries, never raised out of the handler."""
    logger.exception("%s failed unexpectedly", what)
    return 500, json.dumps({"error": "internal error"})


def is_sqs_event(event: object) -> bool:
    """A Lambda SQS event: every record an SQS message with an id to report it by."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    return bool(records) and isinstance(records, list) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs"
        and isinstance(r.get("messageId"), str) for r in records)


def summarize(submissions: list[Submission]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for item in submissions:
        counts[item.status] = counts.get(item.status, 0) + 1
    return {
        "counts": counts,
        "objects": [
            {"object": str(s.ref), "status": s.status, "reason": s.reason, "rule": s.rule,
             "job_id": s.job_id}
            for s in submissions
        ],
    }


def _log_ignored(parsed: ParsedEvents) -> None:
    for reason in parsed.ignored:
        logger.info("event record ignored: %s", reason)


def run_trigger(event: dict[str, Any], context: Any,
                parse: Callable[[dict[str, Any]], ParsedEvents],
                parse_message: Callable[[str], ParsedEvents]) -> dict[str, Any]:
    """Direct events are submitted object by object; SQS batches go through the Powertools
    batch processor so one failing message is redelivered without the good ones."""
    current = bridge()
    current.claims.register_lambda_context(context)
    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        if not is_sqs_event(event):
            parsed = parse(event) if isinstance(event, dict) else ParsedEvents.skip(
                f"event: not a JSON object but {type(event).__name__}")
            _log_ignored(parsed)
            return summarize(submit_all(current, parsed.objects))
        return _process_batch(event, context, lambda record: _submit_message(
            current, record, parse_message))


def _submit_message(current: Bridge, record: Any,
                    parse_message: Callable[[str], ParsedEvents]) -> dict[str, Any]:
    parsed = parse_message(record.body)
    _log_ignored(parsed)
    final = receive_count(record.attributes.approximate_receive_count) >= MAX_RECEIVES
    submissions = submit_all(current, parsed.objects, final_attempt=final)
    again = [s for s in submissions if s.status in {"retry", "error"}]
    if again:
        raise RetryLater("; ".join(f"{s.ref}: {s.reason}" for s in again))
    return summarize(submissions)


def receive_count(value: object, *, unreadable: int = 1) -> int:
    """A delivery count from an attribute or header: decimal ASCII digits, else
    ``unreadable`` (the count of a first delivery): a count that cannot be read must neither
    fail the delivery nor pass for the last one."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else unreadable


def _process_batch(event: dict[str, Any], context: Any,
                   record_handler: Callable[[Any], Any]) -> dict[str, Any]:
    """Records of one batch are handled concurrently, each on its own thread: a batch costs
    about one provider round trip instead of ten. The bridge's clients are thread-safe and
    shared, so connections to the provider are reused across records."""
    import asyncio

    from aws_lambda_powertools.utilities.batch import (
        AsyncBatchProcessor,
        EventType,
        async_process_partial_response,
    )

    async def handle(record: Any) -> Any:
        context_copy = contextvars.copy_context()  # carries the invocation's deadline
        return await asyncio.get_running_loop().run_in_executor(
            _record_workers(), context_copy.run, record_handler, record)

    # a batch where every record failed still answers with batchItemFailures: raising would
    # make Lambda retry the batch as a whole, the same outcome with less information
    processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(async_process_partial_response(event=event, record_handler=handle,
                                               processor=processor, context=context))


# ----------------------------------------------------------------------------- webhook


def handle_webhook(event: object, context: Any,
                   resolve: Callable[[dict[str, Any], Any], dict[str, Any]]) -> dict[str, Any]:
    """The webhook function: completion-queue batches are settled, HTTP requests (Function
    URL or API Gateway HTTP API, both payload 2.0) go to ``resolve``, the router that calls
    :func:`answer_http_callback`; an event that is neither is refused. Nothing raises out."""
    if is_sqs_event(event):
        assert isinstance(event, dict)
        return settle_queued_callbacks(event, context)
    http = (event.get("requestContext") or {}) if isinstance(event, dict) else None
    if not isinstance(http, dict) or not isinstance(http.get("http"), dict):
        logger.warning("webhook invoked with an event that is neither HTTP nor SQS")
        status, body = 400, json.dumps({"error": "not an HTTP request"})
    else:
        try:
            return resolve(event, context)  # type: ignore[arg-type]  # a dict, checked above
        except Exception:
            status, body = internal_error("webhook request")
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body}


def answer_http_callback(provider: str, event: Mapping[str, Any],
                         context: Any = None) -> tuple[int, str]:
    """(status code, JSON body) for one provider callback as an HTTP event."""
    try:
        body = raw_body(event)
    except CallbackError as exc:
        logger.warning("callback from %s refused: %s", provider, exc)
        return refusal(exc)
    return answer_callback(provider, request_headers(event), body, context,
                           query=str(event.get("rawQueryString") or ""))


def answer_callback(provider: str, headers: Mapping[str, str], body: bytes,
                    context: Any = None, query: str = "") -> tuple[int, str]:
    """(status code, JSON body) for one provider callback. Callbacks that pass the cheap
    checks (signature or token HMAC, context) are queued for confirming and settling when a
    completion queue is configured, so the provider gets its answer within its timeout
    whatever its own API or the relay take. Refusals say only what kind of refusal it
    was: the caller may be hostile. ``query`` (the raw query string) travels on among the
    headers under CALLBACK_QUERY, where unsigned dialects find their per-job token."""
    headers = {name: value for name, value in headers.items()
               if name.lower() != CALLBACK_QUERY} | ({CALLBACK_QUERY: query} if query else {})
    try:
        current = bridge()
        queue_url = current.settings.completion_queue_url
        queued = bool(queue_url) and len(body) <= MAX_QUEUED_BODY
        # A queued callback is confirmed with the provider on the queue side, so the answer
        # never waits for the provider's API.
        accepted = accept(current, provider, headers, body, confirm=not queued)
        if accepted is None:
            return 200, json.dumps({"status": "ignored"})
        if queued:
            current.sqs().send_message(QueueUrl=queue_url, MessageBody=json.dumps({
                "provider": provider,
                "headers": dict(headers),
                "body": base64.b64encode(body).decode(),
            }))
            return 202, json.dumps({"status": "queued", "job_id": accepted.outcome.job_id})
        current.claims.register_lambda_context(context)
        with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
            return 200, json.dumps(asdict(settle(current, accepted)))
    except CallbackError as exc:
        logger.warning("callback from %s refused: %s", provider, exc)
        return refusal(exc)
    except ConvbridgeError:
        # Our side failed (storage, secrets, claims): 5xx so the provider retries.
        logger.exception("callback from %s could not be handled", provider)
        return 503, json.dumps({"error": "temporarily unavailable"})
    except Exception:
        return internal_error(f"callback from {provider}")


@dataclass(frozen=True)
class QueuedCallback:
    """One completion-queue message: a callback accepted earlier, as it arrived."""

    provider: str
    headers: dict[str, str]
    body: bytes


def strict_base64(text: str, what: str) -> bytes:
    """``text`` decoded as base64, or CallbackError (400) saying ``what`` was not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CallbackError(f"{what} is not valid base64") from exc


def queued_callback(message: str) -> QueuedCallback:
    """The callback a queue message holds, or CallbackError: the queue is ours, but a message
    that does not read as one of ours will not read any better on its next delivery."""
    document = parse_json_object(message.encode("utf-8", errors="surrogatepass"),
                                 "a queued callback")
    provider, headers, body = (document.get(name) for name in ("provider", "headers", "body"))
    if not isinstance(provider, str) or not isinstance(body, str) or not (
            isinstance(headers, dict)
            and all(isinstance(v, str) for v in headers.values())):
        raise CallbackError("provider, headers or body missing or of the wrong type")
    return QueuedCallback(provider, {str(k): v for k, v in headers.items()},
                          strict_base64(body, "the queued body"))


def settle_queued_callbacks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The queue side of the webhook: each message is a callback accepted earlier; it is
    verified again (the same code path as a direct callback) and settled once."""
    current = bridge()
    current.claims.register_lambda_context(context)

    def settle_message(record: Any) -> None:
        try:
            queued = queued_callback(record.body)
            complete(current, queued.provider, queued.headers, queued.body)
        except CallbackError as exc:
            # it verified when queued; if it no longer does (rules changed), or it cannot be
            # read at all, retrying won't help
            logger.warning("queued callback dropped: %s", exc)
        except ConvbridgeError as exc:
            raise RetryLater(str(exc)) from exc

    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        return _process_batch(event, context, settle_message)
