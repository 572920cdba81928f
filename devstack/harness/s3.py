"""S3 on moto: buckets, uploads, and S3 notifications in the shape AWS sends them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote_plus

import boto3

from devstack.harness.base import StorageHarness
from devstack.lambda_local import SqsPoller

if TYPE_CHECKING:
    from devstack.stack import DevStack

REGION = "us-east-1"
GRANT_ROLE_ARN = "arn:aws:iam::123456789012:role/convbridge-grants"


class S3Harness(StorageHarness):
    storage: ClassVar[str] = "s3"
    trigger_function: ClassVar[str] = "s3_trigger"
    title: ClassVar[str] = "S3 (moto)"
    delivery: ClassVar[str] = "S3 notifications -> SQS -> S3 trigger"

    def __init__(self, location: str = "convbridge-demo") -> None:
        super().__init__(location)
        self._endpoint = ""
        self.events_queue_url = ""

    def start(self, stack: DevStack) -> None:
        self._endpoint = stack.moto.endpoint_url

    def env(self, stack: DevStack) -> dict[str, str]:
        return {"CONVBRIDGE_GRANT_ROLE_ARN": GRANT_ROLE_ARN,
                "CONVBRIDGE_S3_ENDPOINT_URL": stack.moto.endpoint_url}

    def seed(self, stack: DevStack) -> None:
        self.client.create_bucket(Bucket=self.location)
        sqs = boto3.client("sqs", region_name=REGION)
        self.events_queue_url = sqs.create_queue(QueueName="convbridge-s3-events")["QueueUrl"]

    @property
    def client(self) -> Any:
        return boto3.client("s3", region_name=REGION, endpoint_url=self._endpoint)

    def upload(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.location, Key=key, Body=data)

    def read_bytes(self, key: str) -> bytes | None:
        client = self.client
        try:
            body: bytes = client.get_object(Bucket=self.location, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        return body

    def objects(self, prefix: str = "") -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location,
                                                                      Prefix=prefix)
        return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}

    def event_for(self, key: str) -> dict[str, Any]:
        head = self.client.head_object(Bucket=self.location, Key=key)
        return s3_put_event(self.location, key, head["ContentLength"], head["ETag"].strip('"'),
                            head.get("VersionId"))

    def watch(self, stack: DevStack, prefix: str = "inbox/") -> bool:
        """Deliver uploads the deployed way: S3 notifications into SQS, polled into the
        trigger in batches, as Lambda's event source mapping does."""
        sqs = boto3.client("sqs", region_name=REGION)
        arn = sqs.get_queue_attributes(QueueUrl=self.events_queue_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue: dict[str, Any] = {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
        if prefix:
            queue["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        self.client.put_bucket_notification_configuration(
            Bucket=self.location, NotificationConfiguration={"QueueConfigurations": [queue]})
        stack.pollers.append(SqsPoller(sqs, self.events_queue_url,
                                       stack.trigger_module.handler).start())
        return True


def s3_put_event(bucket: str, key: str, size: int, etag: str,
                 version_id: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag,
                           "sequencer": "0055AED6DCD90281E5"}
    if version_id:
        obj["versionId"] = version_id
    return {"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": "2026-11-23T12:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "convbridge-inbox",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }]}
