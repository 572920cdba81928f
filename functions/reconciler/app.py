"""Reconciler: run on a schedule (EventBridge); settles jobs whose callbacks never came by
asking their provider, through the same settle step as a callback."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from convbridge.reconcile import run_scheduled
from convbridge.runtime import route_library_logs

logger = Logger(service="convbridge")
route_library_logs(logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_scheduled(event, context)
