"""Backpressure for SQS-fed triggers: an event whose provider says "not now" waits in the
queue, with backoff, instead of failing.

When a provider answers a job create with 429 or CloudConvert's 402 ("too many jobs at
once"), or the bridge's own budget for it is spent (:mod:`convbridge.budget`), the create is
not retried inside the invocation. The trigger sends the message body again to its own queue
with ``DelaySeconds`` (the backoff below), marked with how many times it was deferred, and
the original counts as handled, so it is deleted.

Why a new message and not ``ChangeMessageVisibility`` on the original: every receive counts
toward the redrive policy's ``maxReceiveCount``, whatever changed the visibility, so waiting
out a long burst that way needs a ``maxReceiveCount`` as large as the deferral budget, and a
message that fails for a real reason would then loop that many times before reaching the
dead-letter queue. A message's retention also counts from its first enqueue, so a long
wait could outlive it. A re-sent message starts a fresh receive count and retention: the
redrive policy keeps meaning "failed five times", and the deferral budget is ours
(``CONVBRIDGE_BACKPRESSURE_MAX_DEFERRALS``). The n-th deferral waits
``min(max, base * 2^(n-1))`` seconds, at least what the provider asked (SQS caps a delay at
900 s). Only an event past its deferral budget becomes a failure report (``PROVIDER_BUSY``).

If the send fails the record is reported as a batch item failure and SQS delivers the
original again after its visibility timeout: nothing is lost. If the invocation dies after
the send, both copies are delivered; the submit claim makes the second a duplicate, never a
second job. The trigger's role needs ``sqs:SendMessage`` on its own queue.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

from convbridge.bridge import Bridge
from convbridge.pipeline import Submission

logger = logging.getLogger(__name__)

#: the message attribute counting an event's deferrals
DEFERRALS_ATTRIBUTE = "convbridge-deferrals"
#: SQS's largest DelaySeconds
MAX_DELAY_SECONDS = 900


def deferrals_of(message_attributes: Mapping[str, Any] | None) -> int:
    """How often the message was deferred already: 0 unless it carries our attribute as a
    plain count (anything else reads as 0, which neither fails it nor ends its budget)."""
    found = (message_attributes or {}).get(DEFERRALS_ATTRIBUTE) or {}
    text = str(found.get("stringValue") or "") if isinstance(found, Mapping) else ""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0


def delay_seconds(bridge: Bridge, deferral: int, asked: float) -> int:
    """The wait before the ``deferral``-th delivery (1 for the first)."""
    settings = bridge.settings
    backoff = settings.backpressure_base_seconds * 2 ** min(deferral - 1, 20)
    wanted = max(min(backoff, settings.backpressure_max_seconds), math.ceil(asked))
    return int(min(wanted, MAX_DELAY_SECONDS))


def budget_spent(bridge: Bridge, message_attributes: Mapping[str, Any] | None) -> bool:
    """The event was deferred as often as the settings allow: this delivery is its last."""
    return deferrals_of(message_attributes) >= bridge.settings.backpressure_max_deferrals


def defer(bridge: Bridge, record: Any, busy: list[Submission]) -> bool:
    """Send ``record``'s body to its queue again, delayed; False when that failed (the caller
    then lets SQS deliver the original again)."""
    deferral = deferrals_of(record.message_attributes) + 1
    asked = max((s.busy_wait or 0.0) for s in busy)
    delay = delay_seconds(bridge, deferral, asked)
    sqs = bridge.sqs()
    try:
        sqs.send_message(
            QueueUrl=_queue_url(sqs, str(record.event_source_arn)),
            MessageBody=record.body, DelaySeconds=delay,
            MessageAttributes={**_carried_attributes(record.message_attributes),
                               DEFERRALS_ATTRIBUTE: {"DataType": "Number",
                                                     "StringValue": str(deferral)}})
    except Exception:  # any failure to re-send leaves the original to SQS's redelivery
        logger.exception("could not defer message %s; it will be delivered again",
                         record.message_id)
        return False
    logger.info("provider busy for %s; deferral %d, next try in %d s",
                ", ".join(str(s.ref) for s in busy), deferral, delay)
    return True


@functools.cache
def _queue_url(sqs: Any, arn: str) -> str:
    """The URL of the queue ``arn`` (arn:aws:sqs:<region>:<account>:<name>), asked once."""
    _, _, _, _, account, name = arn.split(":", 5)
    return str(sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def _carried_attributes(attributes: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """The record's string and number attributes in SendMessage's shape (binary ones are not
    carried: no trigger reads them)."""
    carried = {}
    for name, value in (attributes or {}).items():
        if name == DEFERRALS_ATTRIBUTE or not isinstance(value, Mapping):
            continue
        kind = str(value.get("dataType") or "")
        if kind.startswith(("String", "Number")) and value.get("stringValue") is not None:
            carried[name] = {"DataType": kind, "StringValue": str(value["stringValue"])}
    return carried
