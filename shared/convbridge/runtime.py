"""What the Lambda handlers share: the cold-start Bridge, raw request bodies, JSON logging.

The handlers in ``functions/*/app.py`` hold wiring only; each calls one function here or in
:mod:`convbridge.pipeline`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from convbridge.bridge import Bridge
from convbridge.errors import CallbackError, ConvbridgeError
from convbridge.pipeline import Submission, complete


@functools.cache
def bridge() -> Bridge:
    """Built on the first invocation, then reused for the life of the execution environment."""
    return Bridge.from_env()


#: Vendor loggers that print credentials at DEBUG (botocore logs Secrets Manager response
#: bodies; httpx/httpcore log request URLs, which carry presigned signatures).
CHATTY_VENDOR_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore")


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


def answer_callback(provider: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
    """(status code, JSON body) for one provider callback. Failures say only what kind of
    failure it was: the caller may be hostile."""
    try:
        completion = complete(bridge(), provider, headers, body)
    except CallbackError as exc:
        logging.getLogger(__name__).warning("callback from %s refused: %s", provider, exc)
        return exc.status, json.dumps({"error": type(exc).__name__})
    except ConvbridgeError:
        # Our side failed (storage, secrets): 5xx so the provider retries the callback.
        logging.getLogger(__name__).exception("callback from %s could not be settled", provider)
        return 503, json.dumps({"error": "temporarily unavailable"})
    return 200, json.dumps(asdict(completion))
