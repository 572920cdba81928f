"""S3 trigger: S3 notifications, EventBridge "Object Created" events, SQS-wrapped S3 events."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.events.s3 import parse_s3_event
from convbridge.pipeline import submit_all
from convbridge.runtime import bridge, route_library_logs, summarize

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    parsed = parse_s3_event(event)
    for reason in parsed.ignored:
        logger.info("event record ignored", extra={"reason": reason})
    return summarize(submit_all(bridge(), parsed.objects))
