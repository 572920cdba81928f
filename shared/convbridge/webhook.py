"""The webhook protocol: provider callbacks answered over HTTP within the provider's timeout,
and the completion queue that settles the callbacks accepted there.

``functions/webhook/app.py`` holds the wiring; it calls :func:`handle_webhook` and
:func:`answer_http_callback`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from convbridge.errors import CallbackError, ConvbridgeError
from convbridge.http import deadline_from
from convbridge.model import CallbackRequest
from convbridge.pipeline import accept, complete, settle
from convbridge.providers.base import parse_json_object
from convbridge.runtime import (
    RetryLater,
    bridge,
    callback_request,
    internal_error,
    is_sqs_event,
    process_batch,
    refusal,
    strict_base64,
)

logger = logging.getLogger(__name__)

#: SQS messages stop at 256 KiB; larger callbacks are settled before answering.
MAX_QUEUED_BODY = 180 * 1024


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
        request = callback_request(event)
    except CallbackError as exc:
        logger.warning("callback from %s refused: %s", provider, exc)
        return refusal(exc)
    return answer_callback(provider, request, context)


def answer_callback(provider: str, request: CallbackRequest,
                    context: Any = None) -> tuple[int, str]:
    """(status code, JSON body) for one provider callback. Callbacks that pass the cheap
    checks (signature or token HMAC, context) are queued for confirming and settling when a
    completion queue is configured, so the provider gets its answer within its timeout
    whatever its own API or the relay take. Refusals say only what kind of refusal it
    was: the caller may be hostile. A queued callback travels whole (method, headers, query
    and body), so it is verified on the queue side exactly as it arrived."""
    try:
        current = bridge()
        queue_url = current.settings.completion_queue_url
        queued = bool(queue_url) and len(request.body) <= MAX_QUEUED_BODY
        # A queued callback is confirmed with the provider on the queue side, so the answer
        # never waits for the provider's API.
        accepted = accept(current, provider, request, confirm=not queued)
        if accepted is None:
            return 200, json.dumps({"status": "ignored"})
        if queued:
            current.sqs().send_message(QueueUrl=queue_url,
                                       MessageBody=queue_message(provider, request))
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
    request: CallbackRequest


def queue_message(provider: str, request: CallbackRequest) -> str:
    """The completion-queue message for a callback: the request whole, its body in base64."""
    return json.dumps({"provider": provider, "method": request.method,
                       "headers": dict(request.headers), "query": request.query,
                       "body": base64.b64encode(request.body).decode()})


#: how messages queued by earlier releases carried the callback's query string
LEGACY_QUERY_HEADER = ":query"


def queued_callback(message: str) -> QueuedCallback:
    """The callback a queue message holds, or CallbackError: the queue is ours, but a message
    that does not read as one of ours will not read any better on its next delivery."""
    document = parse_json_object(message.encode("utf-8", errors="surrogatepass"),
                                 "a queued callback")
    provider, headers, body = (document.get(name) for name in ("provider", "headers", "body"))
    query, method = document.get("query", ""), document.get("method", "POST")
    if not all(isinstance(v, str) for v in (provider, body, query, method)) or not (
            isinstance(headers, dict)
            and all(isinstance(v, str) for v in headers.values())):
        raise CallbackError("provider, method, headers, query or body missing or of the wrong "
                            "type")
    headers = {str(k): v for k, v in headers.items()}
    if "query" not in document:
        # queued before the query had a field of its own: it travelled as this header, and a
        # callback still in the queue across an upgrade must settle as it would have
        query = headers.pop(LEGACY_QUERY_HEADER, "")
    request = CallbackRequest(body=strict_base64(str(body), "the queued body"),
                              headers=headers, query=str(query), method=str(method))
    return QueuedCallback(str(provider), request)


def settle_queued_callbacks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The queue side of the webhook: each message is a callback accepted earlier; it is
    verified again (the same code path as a direct callback) and settled once."""
    current = bridge()
    current.claims.register_lambda_context(context)

    def settle_message(record: Any) -> None:
        try:
            queued = queued_callback(record.body)
            complete(current, queued.provider, queued.request)
        except CallbackError as exc:
            # it verified when queued; if it no longer does (rules changed), or it cannot be
            # read at all, retrying won't help
            logger.warning("queued callback dropped: %s", exc)
        except ConvbridgeError as exc:
            raise RetryLater(str(exc)) from exc

    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        return process_batch(event, context, settle_message)
