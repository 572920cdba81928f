"""moto's SQS with the retention check read from the queue's attribute answers as before: a
message within the queue's retention period is received, one past it is not."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack import moto_speedups


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    moto_speedups.apply()
    moto_speedups.apply()  # applying twice changes nothing
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def _age_messages(queue_name: str, seconds: int) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues[queue_name]
    for message in queue._messages:
        message.sent_timestamp -= seconds * 1000


def test_messages_within_retention_are_received_and_older_ones_are_not(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})[
        "QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="fresh")
    _age_messages("q", 30)
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   VisibilityTimeout=0).get("Messages", [])
    assert [m["Body"] for m in received] == ["fresh"]
    _age_messages("q", 31)
    assert sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []) == []
