"""SFTP sweep: run on a schedule (EventBridge); claims the drop's settled files once each and
submits them."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.runtime import route_library_logs
from convbridge.triggers.sftp_sweep import run_scheduled

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_scheduled(event, context)
