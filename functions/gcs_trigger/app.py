"""GCS trigger: Pub/Sub push deliveries of Cloud Storage notifications (and CloudEvents) over a
Lambda Function URL; each request's OIDC token is checked before its body is read."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.runtime import route_library_logs
from convbridge.triggers.pubsub import handle_function_url

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle_function_url(event, context)
