"""Provider callbacks (Lambda Function URL or API Gateway HTTP API): verify and acknowledge at
once; the completion queue (SQS, same function) settles them."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response

from convbridge.runtime import route_library_logs
from convbridge.webhook import answer_http_callback, handle_webhook

logger = Logger(service="convbridge")
route_library_logs(logger)
app = LambdaFunctionUrlResolver()


# CloudConvert v1 calls back with a GET; the others POST
@app.route("/callbacks/<provider>", method=["GET", "POST"])
def provider_callback(provider: str) -> Response[str]:
    status, body = answer_http_callback(provider, app.current_event.raw_event, app.lambda_context)
    return Response(status_code=status, content_type="application/json", body=body)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle_webhook(event, context, app.resolve)
