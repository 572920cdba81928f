"""Wiring: settings, rules, secrets, storages, providers and the HTTP client, built once per
cold start and handed to the pipeline.

Nothing here is created before it is needed: a trigger that only ever sees S3 never builds an
STS client for another storage, never imports another cloud's SDK, and fetches a provider's
secret only when that provider is first used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from convbridge.budget import ProviderBudget
from convbridge.claims import Claims, ClaimStore
from convbridge.clients import CloudClients
from convbridge.errors import ConfigError
from convbridge.http import make_client
from convbridge.providers import PROVIDERS
from convbridge.providers.base import Provider
from convbridge.rules import RuleSet, load_rules
from convbridge.secrets import SecretStore
from convbridge.settings import Settings
from convbridge.storage import STORAGES
from convbridge.storage.base import Storage


class Bridge:
    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        secrets: SecretStore,
        *,
        http: httpx.Client | None = None,
        storages: Mapping[str, Storage] | None = None,
        clients: CloudClients | None = None,
        providers: Mapping[str, Provider] | None = None,
        claims: ClaimStore | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.secrets = secrets
        self.http = http or make_client(settings.http_timeout_seconds)
        self._storages: dict[str, Storage] = dict(storages or {})
        self._providers: dict[str, Provider] = dict(providers or {})
        self._clients = clients or CloudClients(settings)
        self._lock = threading.Lock()
        self._claims: ClaimStore | None = claims

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Bridge:
        settings = Settings.from_env(env)
        aws = CloudClients(settings)
        rules = load_rules(settings.rules_location, read_ssm=aws.read_ssm,
                           read_s3=s3_rules_reader(settings, aws))
        return cls(settings, rules, aws.secrets, clients=aws)

    def storage(self, name: str) -> Storage:
        with self._lock:
            if name not in self._storages:
                cls = STORAGES.load(name)
                self._storages[name] = cls.from_settings(self.settings, self._clients)
            return self._storages[name]

    @property
    def claims(self) -> ClaimStore:
        with self._lock:
            if self._claims is None:
                self._claims = Claims(self.settings.idempotency_table,
                                      self._clients.client("dynamodb"),
                                      expires_after_seconds=self.settings.claim_expiry_seconds)
            return self._claims

    def sqs(self) -> Any:
        return self._clients.client("sqs")

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                cls = PROVIDERS.load(name)
                secret = self.secrets.get(self.settings.provider_secret_name(name))
                self._providers[name] = cls(
                    api_key=secret.field("api_key"),
                    signing_secret=secret.optional("signing_secret"),
                    base_url=self.settings.base_url(name),
                    http=self.http,
                    budget=ProviderBudget(name, self.settings.provider_limits(name)),
                )
            return self._providers[name]

    def context_key(self) -> bytes:
        secret = self.secrets.get(self.settings.context_secret_name)
        key = secret.optional("key") or secret.field("value")
        if len(key) < 32:
            raise ConfigError("the context signing secret must be at least 32 characters")
        return key.encode()


def s3_rules_reader(settings: Settings, clients: CloudClients) -> Callable[[str, str], str]:
    """Reads a rules file kept in S3 through the S3 storage's own client (its endpoint and
    signing configuration)."""

    def read_s3(bucket: str, key: str) -> str:
        # the S3 adapter (and botocore) is imported only when the rules live in S3
        from convbridge.storage.s3 import S3Storage

        body = S3Storage.s3_client(settings, clients).get_object(Bucket=bucket, Key=key)["Body"]
        return str(body.read().decode("utf-8"))

    return read_s3
