"""The toy_s3 trigger function: S3 event notifications from the toy store, whose objects are
the toy store's, not S3's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from convbridge.events import ParsedEvents
from convbridge.events.s3 import parse_s3_event, parse_sqs_body
from convbridge.runtime import run_trigger

STORAGE = "toy_s3"


def _toy(parsed: ParsedEvents) -> ParsedEvents:
    return ParsedEvents(objects=tuple(replace(ref, storage=STORAGE) for ref in parsed.objects),
                        ignored=parsed.ignored)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_trigger(event, context, lambda e: _toy(parse_s3_event(e)),
                       lambda body: _toy(parse_sqs_body(body)))
