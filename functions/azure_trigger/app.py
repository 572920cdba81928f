"""Azure trigger: Event Grid webhook deliveries of Blob Created events (Event Grid or CloudEvents
schema) behind a Lambda Function URL. Authentication, the subscription handshakes and batching
live in convbridge.triggers.event_grid; this file only wires the handler."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.runtime import route_library_logs
from convbridge.triggers.event_grid import answer_function_url

logger = Logger(service="convbridge")
route_library_logs(logger)


# POST (deliveries, Event Grid schema handshake) and OPTIONS (CloudEvents handshake) alike
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    status, headers, body = answer_function_url(event, context)
    return {"statusCode": status, "headers": headers, "body": body}
