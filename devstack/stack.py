"""The whole bridge on one machine: moto (Secrets Manager, DynamoDB, SQS, and S3 when that is
the storage), the provider sandbox, the webhook behind a local Function URL, queue pollers in
place of Lambda's event source mappings, and the real handlers, wired as a deployment would be.

One storage at a time is plugged in through a :mod:`devstack.harness`. ``make demo`` and the
end-to-end tests both drive a :class:`DevStack`, so the demo is itself a test of the deployed
code path.
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

import boto3

from devstack.harness import load_harness
from devstack.harness.base import StorageHarness
from devstack.harness.s3 import S3Harness, s3_put_event
from devstack.lambda_local import FunctionUrlServer, LocalContext, SqsPoller, load_function
from devstack.sandbox import Faults, Sandbox
from devstack.servers import RELAY_EXTRA_HOSTS, MotoServer

__all__ = ["DevStack", "patched_environ", "s3_put_event"]

REGION = "us-east-1"
CLAIMS_TABLE = "convbridge-claims"
#: the SFTP sweep hands claimed files to its own function through this queue
CLAIMS_QUEUE = "convbridge-sftp-claims"


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
    def __init__(self, *, storage: str | StorageHarness = "s3", rules_text: str | None = None,
                 read_grant: str = "presigned_url", env: Mapping[str, str] | None = None,
                 faults: Faults | None = None, moto_own_process: bool = False) -> None:
        self.harness = load_harness(storage)() if isinstance(storage, str) else storage
        self.api_key = secrets.token_urlsafe(24)
        self.signing_secret = secrets.token_urlsafe(32)
        self.context_key = secrets.token_urlsafe(48)
        self._rules_text = rules_text or self.harness.default_rules(read_grant)
        self._tmp = tempfile.TemporaryDirectory(prefix="convbridge-stack-")
        self.moto = MotoServer(own_process=moto_own_process)
        self.sandbox = Sandbox(api_key=self.api_key, signing_secret=self.signing_secret,
                               faults=faults)
        self._extra_env = dict(env or {})
        self.webhook: FunctionUrlServer | None = None
        self._env_cm: Any = None
        self.trigger_module: Any = None
        self.pollers: list[SqsPoller] = []
        #: the SFTP claims queue and its DLQ (SFTP stacks only)
        self.claims_queue_url: str | None = None
        self.claims_dead_letter_url: str | None = None
        self.claims_poller: SqsPoller | None = None

    # lifecycle

    def start(self) -> DevStack:
        self.moto.start()
        # moto keeps state per process, shared by every server started in it
        self.moto.reset()
        self.sandbox.start()
        self.harness.start(self)
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
            # every dialect the sandbox speaks, each with a secret convbridge/<provider>
            # holding the sandbox's key and signing secret
            **{f"CONVBRIDGE_SECRET_{name.upper()}": f"convbridge/{name}"
               for name in self.sandbox.dialects},
            **{f"CONVBRIDGE_{name.upper()}_URL": self.sandbox.base_url(name)
               for name in self.sandbox.dialects},
            "CONVBRIDGE_IDEMPOTENCY_TABLE": CLAIMS_TABLE,
            # the sandbox hands out plain-http download URLs on loopback
            "CONVBRIDGE_RELAY_EXTRA_HOSTS": RELAY_EXTRA_HOSTS,
            **self.harness.env(self),
            **self._extra_env,
        }
        self._env_cm = patched_environ(env)
        self._env_cm.__enter__()
        self._seed_aws()
        self.harness.seed(self)
        sqs = boto3.client("sqs", region_name=REGION)
        completion_url = sqs.create_queue(QueueName="convbridge-completion")["QueueUrl"]
        os.environ["CONVBRIDGE_COMPLETION_QUEUE_URL"] = completion_url
        claims_url = self._claims_queue(sqs) if self._swept else None
        from convbridge import runtime

        runtime.bridge.cache_clear()
        webhook = load_function("webhook")
        self.webhook = FunctionUrlServer(webhook.handler).start()
        os.environ["CONVBRIDGE_WEBHOOK_URL"] = self.webhook.url
        # FreeConvert's webhook belongs to the account; Online-Convert's amazons3 is "AWS"
        self.sandbox.set_freeconvert_webhook(f"{self.webhook.url}/callbacks/freeconvert")
        self.sandbox.set_aws_endpoint(os.environ.get("CONVBRIDGE_S3_ENDPOINT_URL"))
        self.trigger_module = self.harness.load_trigger()
        self.pollers.append(SqsPoller(sqs, completion_url, webhook.handler, batch_size=5).start())
        if claims_url is not None:
            # the sweep function's second event source: the claims it queued, submitted
            self.claims_poller = SqsPoller(sqs, claims_url, self.trigger_module.handler).start()
            self.pollers.append(self.claims_poller)
        return self

    @property
    def _swept(self) -> bool:
        return self.harness.trigger_function == "sftp_sweep"

    def _claims_queue(self, sqs: Any) -> str:
        """The SFTP claims queue and its dead-letter queue, with the template's redrive
        policy (five receives), so a claim that keeps failing ends where a deployment's would."""
        dead = sqs.create_queue(QueueName=f"{CLAIMS_QUEUE}-dlq")["QueueUrl"]
        dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.claims_dead_letter_url = dead
        url: str = sqs.create_queue(QueueName=CLAIMS_QUEUE, Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn,
                                         "maxReceiveCount": "5"})})["QueueUrl"]
        self.claims_queue_url = url
        os.environ["CONVBRIDGE_SFTP_CLAIMS_QUEUE_URL"] = url
        return url

    def stop(self) -> None:
        from convbridge import runtime

        runtime.bridge.cache_clear()
        for poller in self.pollers:
            poller.stop()
        if self.webhook:
            self.webhook.stop()
        self.harness.stop()
        if self._env_cm:
            self._env_cm.__exit__(None, None, None)
        for late in ("CONVBRIDGE_WEBHOOK_URL", "CONVBRIDGE_COMPLETION_QUEUE_URL",
                     "CONVBRIDGE_SFTP_CLAIMS_QUEUE_URL"):
            os.environ.pop(late, None)
        self.sandbox.stop()
        self.moto.stop()
        self._tmp.cleanup()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _seed_aws(self) -> None:
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName=CLAIMS_TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        sm = boto3.client("secretsmanager", region_name=REGION)
        for provider in self.sandbox.dialects:
            sm.create_secret(Name=f"convbridge/{provider}", SecretString=json.dumps(
                {"api_key": self.api_key, "signing_secret": self.signing_secret}))
        sm.create_secret(Name="convbridge/context", SecretString=json.dumps(
            {"key": self.context_key}))

    # actions on the storage

    def upload(self, key: str, data: bytes) -> None:
        self.harness.upload(key, data)

    def event_for(self, key: str) -> dict[str, Any]:
        return self.harness.event_for(key)

    def read_json(self, key: str) -> dict[str, Any] | None:
        body = self.harness.read_bytes(key)
        if body is None:
            return None
        document: dict[str, Any] = json.loads(body)
        return document

    def objects(self, prefix: str = "") -> dict[str, int]:
        return self.harness.objects(prefix)

    # S3 shorthands, used by the S3 tests and the default demo

    @property
    def bucket(self) -> str:
        return self.harness.location

    @property
    def s3(self) -> Any:
        assert isinstance(self.harness, S3Harness), "stack.s3 needs the S3 harness"
        return self.harness.client

    def s3_event(self, key: str) -> dict[str, Any]:
        return self.harness.event_for(key)

    def watch_bucket(self, prefix: str = "inbox/") -> None:
        assert isinstance(self.harness, S3Harness), "watch_bucket needs the S3 harness"
        self.harness.watch(self, prefix)

    # running the functions

    def trigger(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver an event to the storage's trigger function as the cloud would."""
        return self.harness.deliver(self, event)

    def invoke_trigger(self, event: dict[str, Any],
                       context: LocalContext | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.trigger_module.handler(event, context or LocalContext())
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
