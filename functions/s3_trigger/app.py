"""S3 trigger: S3 notifications, EventBridge "Object Created" events, and either delivered
through SQS (the deployed path: batches with partial failure reporting)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.events.s3 import parse_s3_event, parse_sqs_body
from convbridge.runtime import route_library_logs, run_trigger

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_trigger(event, context, parse_s3_event, parse_sqs_body)
