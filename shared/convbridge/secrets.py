"""Secret values from AWS Secrets Manager, fetched on first use and cached for a few minutes.

Secrets are JSON objects (``{"api_key": ..., "signing_secret": ...}``) or plain strings. A
:class:`SecretValue` never shows its contents in repr or str, so an accidental log line or
exception message carries the secret's name only.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import botocore.exceptions

from convbridge.errors import SecretError, VendorError, vendor_errors

CACHE_SECONDS = 300.0


class SecretValue:
    __slots__ = ("_name", "_fields")

    def __init__(self, name: str, fields: dict[str, str]) -> None:
        self._name = name
        self._fields = fields

    def field(self, key: str) -> str:
        try:
            return self._fields[key]
        except KeyError:
            raise SecretError(f"secret {self._name} has no field {key!r}") from None

    def optional(self, key: str) -> str | None:
        return self._fields.get(key)

    def __repr__(self) -> str:
        return f"SecretValue({self._name!r}, fields={sorted(self._fields)})"

    __str__ = __repr__


class SecretStore:
    """Reads secrets by name through an injected Secrets Manager client."""

    def __init__(self, client: Any, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, SecretValue]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> SecretValue:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
            if cached and now - cached[0] < self._cache_seconds:
                return cached[1]
        with vendor_errors(_AWS_ERRORS, name):
            raw = self._client.get_secret_value(SecretId=name)["SecretString"]
        value = SecretValue(name, _fields(raw))
        with self._lock:
            self._cache[name] = (now, value)
        return value


#: what reading the secret ``name`` (the call) raises, as ours: botocore's errors by their type
#: only, since AWS's refusals can name the caller's role, the account and the secret's ARN
_AWS_ERRORS: tuple[VendorError[str], ...] = (
    VendorError(lambda: (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError),
                lambda name, exc: SecretError(f"cannot read secret {name}: "
                                              f"{type(exc).__name__}")),
    # a binary secret answers SecretBinary instead
    VendorError(lambda: KeyError, lambda name, _: SecretError(f"secret {name} has no "
                                                              "SecretString")),
)


def _fields(raw: str) -> dict[str, str]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"value": raw}
    if isinstance(parsed, dict):
        # nested objects stay JSON (an external-account configuration's credential_source)
        return {str(k): json.dumps(v) if isinstance(v, dict | list) else str(v)
                for k, v in parsed.items()}
    return {"value": raw}
