"""The dev stack's harness for toy_s3: the S3 harness's moto bucket, reached through the toy
store's own endpoint setting, with uploads delivered to the toy trigger."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

from devstack.harness.s3 import GRANT_ROLE_ARN, S3Harness

if TYPE_CHECKING:
    from devstack.stack import DevStack


class ToyS3Harness(S3Harness):
    storage: ClassVar[str] = "toy_s3"
    trigger_function: ClassVar[str] = "toy_s3_trigger"
    title: ClassVar[str] = "toy S3-compatible store (moto)"
    delivery: ClassVar[str] = "S3 event notifications -> toy trigger"

    def env(self, stack: DevStack) -> dict[str, str]:
        return {"CONVBRIDGE_GRANT_ROLE_ARN": GRANT_ROLE_ARN,
                "CONVBRIDGE_TOY_S3_ENDPOINT_URL": stack.moto.endpoint_url}

    def load_trigger(self) -> ModuleType:
        from convbridge_toy import trigger

        return trigger

    def watch(self, stack: DevStack, prefix: str = "inbox/") -> bool:
        return False
