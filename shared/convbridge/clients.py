"""AWS clients and secrets, created on first use and shared by the storages, the claims and
the bridge.

Nothing here knows one storage from another: a storage that needs its own endpoint or client
configuration (S3 and S3-compatible servers) passes them when it asks for its client.
"""

from __future__ import annotations

import threading
from typing import Any

from convbridge.secrets import SecretStore
from convbridge.settings import Settings


class CloudClients:
    """AWS clients created on first use (boto3 itself is imported only then), and secret
    values for adapters that need credentials of another cloud."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()
        self._secrets: SecretStore | None = None

    @property
    def secrets(self) -> SecretStore:
        with self._lock:
            if self._secrets is None:
                self._secrets = SecretStore(self._client_unlocked("secretsmanager", None, None))
            return self._secrets

    def client(self, service: str, *, config: Any = None, endpoint_url: str | None = None) -> Any:
        """One client per service and endpoint. ``config`` (a botocore ``Config``) applies when
        the client is first made; without one the client pools as many connections as a batch
        has concurrent records."""
        with self._lock:
            return self._client_unlocked(service, config, endpoint_url)

    def _client_unlocked(self, service: str, config: Any, endpoint_url: str | None) -> Any:
        if (service, endpoint_url) not in self._clients:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {"region_name": self._settings.region,
                                      "config": config or Config(max_pool_connections=32)}
            if endpoint_url:
                kwargs["endpoint_url"] = endpoint_url
            self._clients[service, endpoint_url] = boto3.client(  # type: ignore[call-overload]
                service, **kwargs)
        return self._clients[service, endpoint_url]

    def read_ssm(self, name: str) -> str:
        answer = self.client("ssm").get_parameter(Name=name, WithDecryption=True)
        return str(answer["Parameter"]["Value"])
