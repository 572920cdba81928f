"""What the Lambda handlers share: the cold-start Bridge, event routing, raw request bodies,
queue hand-offs and logging set-up.

The handlers in ``functions/*/app.py`` hold wiring only; each calls one function here.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from convbridge.bridge import Bridge
from convbridge.errors import CallbackError, ConvbridgeError
from convbridge.events import ParsedEvents
from convbridge.http import deadline_from
from convbridge.pipeline import Submission, accept, complete, settle, submit_all
from convbridge.providers.base import CALLBACK_QUERY

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
    over re-serialised JSON."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return str(body).encode("utf-8")


def is_sqs_event(event: Mapping[str, Any]) -> bool:
    records = event.get("Records")
    return bool(records) and isinstance(records, list) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)


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
            parsed = parse(event)
            _log_ignored(parsed)
            return summarize(submit_all(current, parsed.objects))
        return _process_batch(event, context, lambda record: _submit_message(
            current, record, parse_message))


def _submit_message(current: Bridge, record: Any,
                    parse_message: Callable[[str], ParsedEvents]) -> dict[str, Any]:
    parsed = parse_message(record.body)
    _log_ignored(parsed)
    final = int(record.attributes.approximate_receive_count or 1) >= MAX_RECEIVES
    submissions = submit_all(current, parsed.objects, final_attempt=final)
    again = [s for s in submissions if s.status in {"retry", "error"}]
    if again:
        raise RetryLater("; ".join(f"{s.ref}: {s.reason}" for s in again))
    return summarize(submissions)


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


def answer_callback(provider: str, headers: Mapping[str, str], body: bytes,
                    context: Any = None, query: str = "") -> tuple[int, str]:
    """(status code, JSON body) for one provider callback. Genuine callbacks are queued for
    settling when a completion queue is configured, so the provider gets its answer within
    its timeout whatever the relay has to copy. Refusals say only what kind of refusal it
    was: the caller may be hostile. ``query`` (the raw query string) travels on among the
    headers under CALLBACK_QUERY, where unsigned dialects find their per-job token."""
    current = bridge()
    headers = {name: value for name, value in headers.items()
               if name.lower() != CALLBACK_QUERY} | ({CALLBACK_QUERY: query} if query else {})
    try:
        accepted = accept(current, provider, headers, body)
        if accepted is None:
            return 200, json.dumps({"status": "ignored"})
        queue_url = current.settings.completion_queue_url
        if queue_url and len(body) <= MAX_QUEUED_BODY:
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
        return exc.status, json.dumps({"error": type(exc).__name__})
    except ConvbridgeError:
        # Our side failed (storage, secrets, claims): 5xx so the provider retries.
        logger.exception("callback from %s could not be handled", provider)
        return 503, json.dumps({"error": "temporarily unavailable"})


def settle_queued_callbacks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The queue side of the webhook: each message is a callback accepted earlier; it is
    verified again (the same code path as a direct callback) and settled once."""
    current = bridge()
    current.claims.register_lambda_context(context)

    def settle_message(record: Any) -> None:
        message = json.loads(record.body)
        try:
            complete(current, message["provider"], message["headers"],
                     base64.b64decode(message["body"]))
        except CallbackError as exc:
            # it verified when queued; if it no longer does (rules changed), retrying won't help
            logger.warning("queued callback dropped: %s", exc)
        except ConvbridgeError as exc:
            raise RetryLater(str(exc)) from exc

    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        return _process_batch(event, context, settle_message)
