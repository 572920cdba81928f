"""The S3 adapter chooses its own client: its endpoint and signing configuration, so an
S3-compatible store can be a small subclass with its own name and endpoint."""

from __future__ import annotations

from typing import ClassVar

from convbridge.clients import CloudClients
from convbridge.settings import Settings
from convbridge.storage.s3 import S3Storage

ENV = {"CONVBRIDGE_RULES": "/opt/rules.yaml", "CONVBRIDGE_CONTEXT_SECRET": "arn:ctx",
       "CONVBRIDGE_IDEMPOTENCY_TABLE": "claims", "AWS_REGION": "eu-west-1"}


class OtherS3Store(S3Storage):
    """An S3-compatible server beside AWS's S3, as a MinIO or R2 adapter would be."""

    name: ClassVar[str] = "other_s3"

    @classmethod
    def configured_endpoint(cls, settings: Settings) -> str | None:
        return "http://other-store.test:9000"


def test_s3_client_reaches_the_configured_endpoint_path_style_with_sigv4() -> None:
    settings = Settings.from_env({**ENV, "CONVBRIDGE_S3_ENDPOINT_URL": "http://minio.test:9000"})
    storage = S3Storage.from_settings(settings, CloudClients(settings))
    client = storage._s3
    assert client.meta.endpoint_url == "http://minio.test:9000"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.signature_version == "s3v4"
    # providers are handed the same server
    assert storage.endpoint_url == "http://minio.test:9000"


def test_without_an_endpoint_setting_the_client_is_aws_s3() -> None:
    settings = Settings.from_env(ENV)
    storage = S3Storage.from_settings(settings, CloudClients(settings))
    assert storage._s3.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert storage.endpoint_url is None


def test_a_subclass_with_its_own_endpoint_gets_its_own_client() -> None:
    settings = Settings.from_env(ENV)
    clients = CloudClients(settings)
    aws = S3Storage.from_settings(settings, clients)
    other = OtherS3Store.from_settings(settings, clients)
    assert other._s3.meta.endpoint_url == "http://other-store.test:9000"
    assert other.endpoint_url == "http://other-store.test:9000"
    assert other._s3.meta.config.s3 == {"addressing_style": "path"}
    assert aws._s3.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert S3Storage.from_settings(settings, clients)._s3 is aws._s3
    assert repr(other) == "OtherS3Store(region='eu-west-1', endpoint_url='http://other-store.test:9000')"
