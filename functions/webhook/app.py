"""Provider callbacks (Lambda Function URL or API Gateway HTTP API): verify and acknowledge at
once; the completion queue (SQS, same function) settles them."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response

from convbridge.runtime import (
    answer_callback,
    is_sqs_event,
    raw_body,
    route_library_logs,
    settle_queued_callbacks,
)

logger = Logger(service="convbridge")
route_library_logs(logger)
app = LambdaFunctionUrlResolver()


# CloudConvert v1 calls back with a GET; the others POST
@app.route("/callbacks/<provider>", method=["GET", "POST"])
def provider_callback(provider: str) -> Response[str]:
    event = app.current_event
    status, body = answer_callback(provider, event.headers, raw_body(event.raw_event),
                                   app.lambda_context, query=event.raw_query_string or "")
    return Response(status_code=status, content_type="application/json", body=body)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if is_sqs_event(event):
        return settle_queued_callbacks(event, context)
    return app.resolve(event, context)
