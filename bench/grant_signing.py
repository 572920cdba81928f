"""Grant signing: what keyless signing costs per grant against signing with a held key, each
baseline measured in the same run.

* Azure: an account-key service SAS (the opt-in) against a user-delegation SAS signed with a
  delegation key got from Azurite (HTTPS, ``--oauth basic``) and cached; the first grant of a
  fresh storage, which fetches the Entra token and the delegation key, is reported apart.
* GCS: a V4 signed URL signed with a JSON key (the opt-in) against one whose signature comes
  from IAM Credentials ``signBlob``. signBlob is
  :class:`devstack.servers_gcs.LocalGoogleFederation`, a loopback stand-in: the network round
  trip to the real IAM Credentials API is not in the figure, only loopback HTTP plus the
  stand-in's RSA signature.

Each figure is the median and p95 of ``GRANTS`` grants, each timed alone, after ``WARM_UP``
untimed ones; a figure and its baseline take turns grant by grant. Run alone:
``PYTHONPATH=shared:. python -m bench.grant_signing``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import ssl
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from bench.common import Row, say
from convbridge.model import Grant, ObjectRef

GRANTS = 200
WARM_UP = 20
#: fresh storages whose first grant (token + delegation key, or token exchange) is timed
FIRST_GRANTS = 10
TTL_SECONDS = 900
AREA = "grant signing"
KEY = "inbox/a/photo 1.png"
SERVICE_ACCOUNT = "convbridge-signer@convbridge-local.iam.gserviceaccount.com"


@dataclass(frozen=True)
class Timing:
    """Seconds per grant over ``samples`` grants."""

    median: float
    p95: float
    slowest: float
    samples: int


def timing(samples: list[float]) -> Timing:
    """Median and nearest-rank p95 (the smallest sample that 95% of samples do not exceed)."""
    ordered = sorted(samples)
    return Timing(statistics.median(ordered), ordered[math.ceil(0.95 * len(ordered)) - 1],
                  ordered[-1], len(ordered))


def time_grants(*mints: Callable[[], Grant], n: int = GRANTS,
                warm_up: int = WARM_UP) -> list[Timing]:
    """Each mint's timing, taking turns grant by grant so a figure and its baseline see the
    same load on the machine."""
    for _ in range(warm_up):
        for mint in mints:
            mint()
    samples: list[list[float]] = [[] for _ in mints]
    for _ in range(n):
        for mint, taken in zip(mints, samples, strict=True):
            started = time.perf_counter()
            mint()
            taken.append(time.perf_counter() - started)
    return [timing(taken) for taken in samples]


def time_first_grants(fresh_mint: Callable[[], Callable[[], Grant]],
                      n: int = FIRST_GRANTS) -> Timing:
    """The first grant of ``n`` storages built apart (building one is not timed)."""
    samples = []
    for _ in range(n):
        mint = fresh_mint()
        started = time.perf_counter()
        mint()
        samples.append(time.perf_counter() - started)
    return timing(samples)


def _rows(label: str, found: Timing, base: Timing, base_label: str, note: str) -> list[Row]:
    return [Row(AREA, f"{label}: {stat}", getattr(found, stat) * 1000, "ms",
                getattr(base, stat) * 1000, f"{base_label}, {stat}", "report", None,
                f"{found.samples} grants after {WARM_UP}; {note}")
            for stat in ("median", "p95")]


def _say(label: str, found: Timing) -> None:
    say(f"  {label}: median {found.median * 1e6:,.0f} us, p95 {found.p95 * 1e6:,.0f} us, "
        f"slowest {found.slowest * 1e6:,.0f} us ({found.samples} grants)")


# -- Azure -------------------------------------------------------------------------------------


def azure_rows() -> list[Row]:
    from azure.core.credentials import AccessToken
    from azure.storage.blob import BlobServiceClient

    from convbridge.storage.azure_blob import AzureBlobStorage
    from convbridge.storage.azure_identity import EntraTokenSource, UserDelegationSigning
    from devstack.servers_azure import (
        ACCOUNT_KEY,
        ACCOUNT_NAME,
        AzuriteOAuthServer,
        azurite_bearer_token,
    )

    class Bearer:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken(azurite_bearer_token(), int(time.time()) + 3600)

    def entra() -> httpx.Client:
        """Entra's token endpoint, answered in memory: the exchange's network cost is not in
        the first-grant figure, only Azurite's Get User Delegation Key is."""
        return httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(
            200, json={"token_type": "Bearer", "expires_in": 3599,
                       "access_token": azurite_bearer_token()})))

    with AzuriteOAuthServer() as azurite:
        container = f"bench-{uuid.uuid4().hex[:8]}"
        service = BlobServiceClient(azurite.endpoint_url, credential=Bearer(),
                                    connection_verify=azurite.ca_path)
        service.create_container(container).upload_blob(KEY, b"the source")
        ref = ObjectRef("azure_blob", f"{ACCOUNT_NAME}/{container}", KEY)

        def delegated() -> AzureBlobStorage:
            tokens = EntraTokenSource(tenant_id="00000000-0000-0000-0000-000000000001",
                                      client_id="11111111-1111-1111-1111-111111111111",
                                      assertion=lambda: "aws-issued.jwt",
                                      authority="https://login.example", http=entra())
            return AzureBlobStorage(account_name=ACCOUNT_NAME,
                                    signing=UserDelegationSigning(tokens=tokens),
                                    endpoint=azurite.endpoint_url,
                                    connection_verify=azurite.ca_path)

        keyed = AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                                 endpoint=azurite.endpoint_url, connection_verify=azurite.ca_path)
        storage = delegated()
        baseline, cached = time_grants(lambda: keyed.grant_read(ref, TTL_SECONDS),
                                       lambda: storage.grant_read(ref, TTL_SECONDS))
        first = time_first_grants(lambda: (lambda fresh: lambda: fresh.grant_read(
            ref, TTL_SECONDS))(delegated()))
        _check_azure_grant(storage.grant_read(ref, TTL_SECONDS), azurite.ca_path)
    _say("Azure account-key SAS", baseline)
    _say("Azure user-delegation SAS, key cached", cached)
    _say("Azure user-delegation SAS, first grant", first)
    base_label = "account-key SAS"
    rows = _rows("Azure read grant, user-delegation SAS (delegation key cached)", cached,
                 baseline, base_label, "signed locally with the cached key, as the account key "
                 "signs")
    rows.append(Row(AREA, "Azure read grant, user-delegation SAS: first grant (gets the key)",
                    first.median * 1000, "ms", baseline.median * 1000, f"{base_label}, median",
                    "report", None,
                    f"median of {first.samples} fresh storages (slowest "
                    f"{first.slowest * 1000:.1f} ms): "
                    "TLS connect and Get User Delegation Key at Azurite on loopback; the Entra "
                    "token exchange answered in memory; then once per key lifetime"))
    return rows


def _check_azure_grant(grant: Grant, ca_path: str) -> None:
    """The timed grants are real: a user-delegation SAS that Azurite serves the blob for."""
    token = dict(parse_qsl((grant.secret or {})["sas_token"]))
    if "skoid" not in token:
        raise RuntimeError("the Azure grant is not a user-delegation SAS")
    context = ssl.create_default_context(cafile=ca_path)
    answer = httpx.get(grant.url or "", verify=context)
    if answer.content != b"the source":
        raise RuntimeError(f"Azurite refused the user-delegation SAS: HTTP {answer.status_code}")


# -- GCS ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lambda_role_environment() -> Iterator[None]:
    """The Lambda role's credentials, as Lambda puts them in the environment, which google-auth
    signs the subject token of the federation with (nobody checks that AWS signature here)."""
    values = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE00",
              "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
              "AWS_SESSION_TOKEN": "lambda-session-token", "AWS_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _SecretsManager:
    """Secrets Manager answering one secret, so it reaches the bridge as in Lambda (nested
    objects as JSON text)."""

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def get_secret_value(self, SecretId: str) -> dict[str, str]:  # noqa: N803 (boto3's name)
        return {"SecretString": json.dumps(self._value)}


def gcs_rows() -> list[Row]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    from convbridge.secrets import SecretStore
    from convbridge.storage.gcs import GcsStorage, storage_client
    from convbridge.storage.gcs_identity import gcs_identity
    from devstack.servers_gcs import LocalGoogleFederation

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        {"type": "service_account", "project_id": "bench", "private_key_id": "1",
         "private_key": pem, "client_email": SERVICE_ACCOUNT, "client_id": "1",
         "token_uri": "https://oauth2.googleapis.com/token"})
    keyed = GcsStorage(client=storage_client(key, None, project="bench"), signer=key)
    ref = ObjectRef("gcs", "bench-bucket", KEY, version="1700000000000000")

    with _lambda_role_environment():
        federation = LocalGoogleFederation(SERVICE_ACCOUNT).start()
        try:
            def federated() -> GcsStorage:
                value = {**federation.external_account(),
                         "service_account_email": SERVICE_ACCOUNT}
                name = "bench/gcs-federation"
                found = gcs_identity(name, SecretStore(_SecretsManager(value)).get(name),
                                     iam_credentials_url=federation.url)
                return GcsStorage(client=storage_client(found.client_credentials, None,
                                                        project="bench"), signer=found.signer)

            storage = federated()
            signed_before = len(federation.signed)
            baseline, signblob = time_grants(lambda: keyed.grant_read(ref, TTL_SECONDS),
                                             lambda: storage.grant_read(ref, TTL_SECONDS))
            signed = len(federation.signed) - signed_before
            first = time_first_grants(lambda: (lambda fresh: lambda: fresh.grant_read(
                ref, TTL_SECONDS))(federated()))
            _check_gcs_grant(storage.grant_read(ref, TTL_SECONDS))
        finally:
            federation.stop()
    if signed != GRANTS + WARM_UP:
        raise RuntimeError(f"{GRANTS + WARM_UP} GCS grants made {signed} signBlob calls")
    _say("GCS V4 signed URL, JSON key", baseline)
    _say("GCS V4 signed URL, signBlob (loopback stand-in)", signblob)
    _say("GCS V4 signed URL, signBlob, first grant", first)
    base_label = "JSON-key V4 signing"
    rows = _rows("GCS read grant, V4 signed URL via signBlob (loopback stand-in)", signblob,
                 baseline, base_label, "one signBlob call per grant to LocalGoogleFederation on "
                 "loopback: the network round trip to the real IAM Credentials API is not in "
                 "this figure")
    rows.append(Row(AREA, "GCS read grant via signBlob: first grant (token exchange)",
                    first.median * 1000, "ms", baseline.median * 1000, f"{base_label}, median",
                    "report", None,
                    f"median of {first.samples} fresh storages (slowest "
                    f"{first.slowest * 1000:.1f} ms): "
                    "Google STS exchange, impersonation and signBlob, all at the loopback "
                    "stand-in; then once per token lifetime"))
    return rows


def _check_gcs_grant(grant: Grant) -> None:
    query = dict(parse_qsl(urlsplit(grant.url or "").query))
    if not query.get("X-Goog-Credential", "").startswith(f"{SERVICE_ACCOUNT}/"):
        raise RuntimeError("the GCS grant is not signed as the federated service account")
    base64.b16decode(query["X-Goog-Signature"].upper())  # a hex RSA signature, not empty


def measure() -> list[Row]:
    return [*azure_rows(), *gcs_rows()]


def main() -> int:
    from bench.run import table

    rows = measure()
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
