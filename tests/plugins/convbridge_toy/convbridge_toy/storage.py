"""``toy_s3``: an S3-compatible store reached at its own endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import boto3

from convbridge.storage.s3 import S3Storage

if TYPE_CHECKING:
    from convbridge.clients import CloudClients
    from convbridge.settings import Settings


class ToyS3Storage(S3Storage):
    name: ClassVar[str] = "toy_s3"

    @classmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> ToyS3Storage:
        endpoint = settings.required("TOY_S3_ENDPOINT_URL", "to reach the toy_s3 store")
        return cls(
            s3_client=boto3.client("s3", region_name=settings.region, endpoint_url=endpoint),
            sts_client=clients.client("sts") if settings.grant_role_arn else None,
            grant_role_arn=settings.grant_role_arn,
            region=settings.region,
            endpoint_url=endpoint,
        )
