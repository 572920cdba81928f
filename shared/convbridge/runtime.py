"""What the Lambda handlers share: the cold-start Bridge, event routing, raw request bodies,
SQS batches and logging set-up. The webhook protocol is in :mod:`convbridge.webhook`.

The handlers in ``functions/*/app.py`` hold wiring only: the S3 trigger calls
:func:`run_trigger` here, the others their module's entry point (:mod:`convbridge.webhook`,
:mod:`convbridge.reconcile`, :mod:`convbridge.triggers`), and every one of them
:func:`route_library_logs`.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from convbridge import backpressure
from convbridge.bridge import Bridge
from convbridge.budget import deferring
from convbridge.errors import CallbackError, ConvbridgeError
from convbridge.events import ParsedEvents
from convbridge.events.retry import BadRetryEvent, is_retry_event, parse_retry_event
from convbridge.http import deadline_from
from convbridge.model import CallbackRequest, ObjectRef
from convbridge.pipeline import Submission, retry_failures, submit_all, summarize

logger = logging.getLogger(__name__)

#: Vendor loggers that print credentials at DEBUG (botocore logs Secrets Manager response
#: bodies; httpx/httpcore log request URLs, which carry presigned signatures).
CHATTY_VENDOR_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore",
                         "azure", "google", "paramiko")
#: SQS delivers a message this many times before the redrive policy moves it to the DLQ; on
#: the last delivery a transient failure is reported instead of retried (template.yaml).
MAX_RECEIVES = 5
#: failure reports one retry invocation handles; its answer's cursor carries the rest
RETRY_REPORTS_PER_INVOCATION = 25
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


def callback_request(event: Mapping[str, Any]) -> CallbackRequest:
    """The callback an HTTP event (payload 2.0) carries: its exact body bytes (CallbackError
    when a body marked base64 is not), headers, raw query string and method."""
    http = (event.get("requestContext") or {}).get("http") or {}
    return CallbackRequest(body=raw_body(event), headers=request_headers(event),
                           query=str(event.get("rawQueryString") or ""),
                           method=str(http.get("method") or "POST"))


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


def _log_ignored(parsed: ParsedEvents) -> None:
    for reason in parsed.ignored:
        logger.info("event record ignored: %s", reason)


def run_trigger(event: dict[str, Any], context: Any,
                parse: Callable[[dict[str, Any]], ParsedEvents],
                parse_message: Callable[[str], ParsedEvents]) -> dict[str, Any]:
    """Direct events are submitted object by object; SQS batches go through the Powertools
    batch processor so one failing message is redelivered without the good ones; a retry
    event (``convbridge retry --stack``) resubmits failures."""
    current = bridge()
    current.claims.register_lambda_context(context)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    with deadline_from(remaining):
        if is_retry_event(event):
            return answer_retry(current, event, remaining)
        if not is_sqs_event(event):
            parsed = parse(event) if isinstance(event, dict) else ParsedEvents.skip(
                f"event: not a JSON object but {type(event).__name__}")
            _log_ignored(parsed)
            return summarize(submit_all(current, parsed.objects))
        return process_batch(event, context, lambda record: _submit_message(
            current, record, parse_message))


def answer_retry(current: Bridge, event: dict[str, Any],
                 remaining: Callable[[], int] | None) -> dict[str, Any]:
    """The summary of a bounded retry run, or ``{"error", "message"}`` saying why none ran.
    The caller was let in by IAM (lambda:InvokeFunction), so the message may name the field
    it got wrong."""
    try:
        run = retry_failures(current, parse_retry_event(event),
                             max_reports=RETRY_REPORTS_PER_INVOCATION, remaining_ms=remaining)
    except BadRetryEvent as exc:
        logger.warning("retry event refused: %s", exc)
        return {"error": "BadRetryEvent", "message": str(exc)}
    except ConvbridgeError as exc:
        logger.error("retry failed: %s", exc)
        return {"error": type(exc).__name__, "message": str(exc)}
    except Exception:  # noqa: BLE001 (the answer must come back; the log has the traceback)
        logger.exception("retry failed unexpectedly")
        return {"error": "internal error", "message": "see the function's log"}
    summary = run.summary()
    logger.info("retry %s: %s", "dry run" if run.dry_run else "run", json.dumps(
        {"counts": summary["counts"], "cursor": summary["cursor"]}))
    return summary


def run_batch(event: dict[str, Any], context: Any,
              record_handler: Callable[[Bridge, Any], Any]) -> dict[str, Any]:
    """An SQS batch for a function whose messages are not S3 events (the SFTP claims queue):
    the cold-start Bridge, claims that expire with the invocation, its deadline, and
    :func:`process_batch` calling ``record_handler(bridge, record)`` for each message."""
    current = bridge()
    current.claims.register_lambda_context(context)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    with deadline_from(remaining):
        return process_batch(event, context, lambda record: record_handler(current, record))


def _submit_message(current: Bridge, record: Any,
                    parse_message: Callable[[str], ParsedEvents]) -> dict[str, Any]:
    parsed = parse_message(record.body)
    _log_ignored(parsed)
    return submit_queued(current, record, parsed.objects)


def submit_queued(current: Bridge, record: Any, objects: Iterable[ObjectRef], *,
                  settled: Callable[[Submission], None] | None = None) -> dict[str, Any]:
    """Submit the objects one queued message names, as every SQS-fed trigger does: the last
    delivery (or one past its deferral budget) is the final attempt; "not now" answers defer
    the message (:mod:`convbridge.backpressure`); other transient trouble raises RetryLater so
    SQS delivers it again. ``settled`` is told of each submission that needs no other
    delivery (submitted, duplicate, rejected, skipped) before that."""
    final = (receive_count(record.attributes.approximate_receive_count) >= MAX_RECEIVES
             or backpressure.budget_spent(current, record.message_attributes))
    with deferring():
        submissions = submit_all(current, objects, final_attempt=final)
    if settled is not None:
        for submission in submissions:
            if submission.status not in {"retry", "error"}:
                settled(submission)
    again = [s for s in submissions if s.status in {"retry", "error"}]
    busy = [s for s in again if s.busy_wait is not None]
    # only "not now" answers: the event waits in the queue (convbridge.backpressure);
    # anything else is delivered again by SQS and counts toward the redrive policy
    if busy and len(busy) == len(again) and backpressure.defer(current, record, busy):
        return summarize(submissions)
    if again:
        raise RetryLater("; ".join(f"{s.ref}: {s.reason}" for s in again))
    return summarize(submissions)


def receive_count(value: object, *, unreadable: int = 1) -> int:
    """A delivery count from an attribute or header: decimal ASCII digits, else
    ``unreadable`` (the count of a first delivery): a count that cannot be read must neither
    fail the delivery nor pass for the last one."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else unreadable


def process_batch(event: dict[str, Any], context: Any,
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


def strict_base64(text: str, what: str) -> bytes:
    """``text`` decoded as base64, or CallbackError (400) saying ``what`` was not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CallbackError(f"{what} is not valid base64") from exc

