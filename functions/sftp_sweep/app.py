"""SFTP sweep: on a schedule (EventBridge) it claims the drop's settled files once each and
queues them; on its claims queue (SQS) it submits them."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.runtime import route_library_logs
from convbridge.triggers.sftp_sweep import run_function

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_function(event, context)
