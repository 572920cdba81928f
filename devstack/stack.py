"""The whole bridge on one machine: moto (S3, STS, Secrets Manager), the provider sandbox,
the webhook behind a local Function URL, and the real handlers, wired as a deployment would be.

``make demo`` and the end-to-end tests both drive a :class:`DevStack`, so the demo is itself a
test of the deployed code path.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3

from devstack.lambda_local import FunctionUrlServer, LocalContext, SqsPoller, load_function
from devstack.sandbox import Faults, Sandbox
from devstack.servers import MotoServer

REGION = "us-east-1"
BUCKET = "convbridge-demo"
GRANT_ROLE_ARN = "arn:aws:iam::123456789012:role/convbridge-grants"

DEFAULT_RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: s3, location: %(bucket)s, prefix: inbox/, suffixes: [.png, .jpg, .jpeg, .webp]}
    convert: {to: pdf}
    provider: cloudconvert
    read_grant: %(read_grant)s
    max_size_bytes: 10485760
    outputs: outbox/
    results: results/
    failures: failures/
"""


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class DevStack:
    def __init__(self, *, rules_text: str | None = None, read_grant: str = "presigned_url",
                 bucket: str = BUCKET, env: Mapping[str, str] | None = None,
                 faults: Faults | None = None) -> None:
        self.bucket = bucket
        self.api_key = secrets.token_urlsafe(24)
        self.signing_secret = secrets.token_urlsafe(32)
        self.context_key = secrets.token_urlsafe(48)
        self._rules_text = rules_text or DEFAULT_RULES % {"bucket": bucket,
                                                           "read_grant": read_grant}
        self._tmp = tempfile.TemporaryDirectory(prefix="convbridge-stack-")
        self.moto = MotoServer()
        self.sandbox = Sandbox(api_key=self.api_key, signing_secret=self.signing_secret,
                               faults=faults)
        self._extra_env = dict(env or {})
        self.webhook: FunctionUrlServer | None = None
        self._env_cm: Any = None
        self.trigger_module: Any = None
        self.pollers: list[SqsPoller] = []
        self.s3_events_queue_url = ""

    # lifecycle

    def start(self) -> DevStack:
        self.moto.start()
        # moto keeps state per process, shared by every server started in it
        self.moto.reset()
        self.sandbox.start()
        rules_path = Path(self._tmp.name) / "rules.yaml"
        rules_path.write_text(self._rules_text, encoding="utf-8")
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.moto.endpoint_url,
            "POWERTOOLS_SERVICE_NAME": "convbridge",
            "CONVBRIDGE_RULES": str(rules_path),
            "CONVBRIDGE_CONTEXT_SECRET": "convbridge/context",
            "CONVBRIDGE_SECRET_CLOUDCONVERT": "convbridge/cloudconvert",
            "CONVBRIDGE_CLOUDCONVERT_URL": self.sandbox.url + "/v2",
            "CONVBRIDGE_GRANT_ROLE_ARN": GRANT_ROLE_ARN,
            "CONVBRIDGE_S3_ENDPOINT_URL": self.moto.endpoint_url,
            "CONVBRIDGE_IDEMPOTENCY_TABLE": "convbridge-claims",
            **self._extra_env,
        }
        self._env_cm = patched_environ(env)
        self._env_cm.__enter__()
        self._seed_aws()
        sqs = boto3.client("sqs", region_name=REGION)
        completion_url = sqs.create_queue(QueueName="convbridge-completion")["QueueUrl"]
        os.environ["CONVBRIDGE_COMPLETION_QUEUE_URL"] = completion_url
        self.s3_events_queue_url = sqs.create_queue(QueueName="convbridge-s3-events")["QueueUrl"]
        from convbridge import runtime

        runtime.bridge.cache_clear()
        webhook = load_function("webhook")
        self.webhook = FunctionUrlServer(webhook.handler).start()
        os.environ["CONVBRIDGE_WEBHOOK_URL"] = self.webhook.url
        self.trigger_module = load_function("s3_trigger")
        self.pollers.append(SqsPoller(sqs, completion_url, webhook.handler, batch_size=5).start())
        return self

    def watch_bucket(self, prefix: str = "inbox/") -> None:
        """Deliver uploads the deployed way: S3 notifications into SQS, polled into the
        trigger in batches, as Lambda's event source mapping does."""
        sqs = boto3.client("sqs", region_name=REGION)
        arn = sqs.get_queue_attributes(QueueUrl=self.s3_events_queue_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue: dict[str, Any] = {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
        if prefix:
            queue["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket, NotificationConfiguration={"QueueConfigurations": [queue]})
        self.pollers.append(SqsPoller(sqs, self.s3_events_queue_url,
                                      self.trigger_module.handler).start())

    def stop(self) -> None:
        from convbridge import runtime

        runtime.bridge.cache_clear()
        for poller in self.pollers:
            poller.stop()
        if self.webhook:
            self.webhook.stop()
        if self._env_cm:
            self._env_cm.__exit__(None, None, None)
        for late in ("CONVBRIDGE_WEBHOOK_URL", "CONVBRIDGE_COMPLETION_QUEUE_URL"):
            os.environ.pop(late, None)
        self.sandbox.stop()
        self.moto.stop()
        self._tmp.cleanup()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _seed_aws(self) -> None:
        self.s3.create_bucket(Bucket=self.bucket)
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName="convbridge-claims",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        sm = boto3.client("secretsmanager", region_name=REGION)
        sm.create_secret(Name="convbridge/cloudconvert", SecretString=json.dumps(
            {"api_key": self.api_key, "signing_secret": self.signing_secret}))
        sm.create_secret(Name="convbridge/context", SecretString=json.dumps(
            {"key": self.context_key}))

    # actions

    @property
    def s3(self) -> Any:
        return boto3.client("s3", region_name=REGION, endpoint_url=self.moto.endpoint_url)

    def upload(self, key: str, data: bytes) -> dict[str, Any]:
        return dict(self.s3.put_object(Bucket=self.bucket, Key=key, Body=data))

    def s3_event(self, key: str) -> dict[str, Any]:
        """The S3 notification AWS would deliver for ``key``, in its real shape."""
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        return s3_put_event(self.bucket, key, head["ContentLength"], head["ETag"].strip('"'),
                            head.get("VersionId"))

    def trigger(self, event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.trigger_module.handler(event, LocalContext())
        return result

    def wait(self, timeout: float = 30.0) -> None:
        """Until every queued event is handled, every job ran and every callback settled."""
        deadline = time.monotonic() + timeout
        while True:
            if all(p.idle() for p in self.pollers):
                self.sandbox.wait_idle(timeout=max(0.1, deadline - time.monotonic()))
                if all(p.idle() for p in self.pollers):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the stack did not settle in time")
            time.sleep(0.05)

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def objects(self, prefix: str = "") -> dict[str, int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=prefix)
        return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}


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
