"""moto's SQS, with the same answers in less time on queues holding thousands of messages.

moto 5.x checks each message it is about to receive against the queue's retention period by
computing all the queue's attributes, ApproximateNumberOfMessages and the other counts among
them, each a scan of every message. A receive of 10 from a queue of 2,000 messages so walked
60,000 messages, and a burst of 2,000 uploads spent most of its time in moto, not in the bridge.
The retention period is a plain attribute of the queue: reading it is the same check.

:func:`apply` is idempotent; :class:`devstack.servers.MotoServer` applies it in whichever
process runs moto.
"""

from __future__ import annotations

from typing import Any


def apply() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    if getattr(SQSBackend, "_convbridge_speedups", False):
        return

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str,
                                                   message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())

    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period)
    SQSBackend._convbridge_speedups = True  # type: ignore[attr-defined]
