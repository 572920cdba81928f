"""Google Cloud Storage I/O for the sandbox's ``export/google-cloud-storage`` task, done over the
JSON API with exactly the service-account key the task carried: the key must parse, and it signs
the self-signed JWT sent as the bearer token of each upload, as Google accepts for its APIs.

Real CloudConvert reaches storage.googleapis.com; the offline sandbox cannot, so the caller maps
it to an emulator (``Sandbox.set_gcs_endpoint``, e.g. a fake-gcs-server URL). fake-gcs-server
verifies no token, so what the key may reach is not decided here; only that one was given and
that it is a usable key. Errors become ``StorageError`` naming the object, never the key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote

import httpx

from .storage_io import FileBlob, StorageError, guess_content_type

_CHUNK = 1024 * 1024
#: the audience of a self-signed JWT for the Cloud Storage API
AUDIENCE = "https://storage.googleapis.com/"


@dataclass(frozen=True)
class GcsAccess:
    """Where a GCS task writes and the service-account key it may use; ``endpoint`` is resolved
    when the task runs."""

    project_id: str
    bucket: str
    client_email: str
    private_key: str = field(repr=False)
    endpoint: str = ""


def bearer_token(access: GcsAccess) -> str:
    """A self-signed JWT for ``access.client_email``, signed with the task's private key."""
    try:
        from google.auth import crypt, jwt
    except ImportError as exc:  # pragma: no cover - the gcs extra is installed with devstack
        raise StorageError("GCS tasks need google-auth (pip install 'convbridge[gcs]')") from exc
    try:
        signer = crypt.RSASigner.from_string(access.private_key)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:
        raise StorageError(f"GCS {access.bucket}: private_key is not a usable RSA key") from exc
    now = int(time.time())
    claims = {"iss": access.client_email, "sub": access.client_email, "aud": AUDIENCE,
              "iat": now, "exp": now + 3600}
    token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
    return token.decode()


def write_gcs(client: httpx.Client, access: GcsAccess, name: str, data: FileBlob) -> None:
    """One media upload of the whole file, replacing any object of that name."""
    url = (f"{access.endpoint.rstrip('/')}/upload/storage/v1/b/{quote(access.bucket, safe='')}"
           f"/o?uploadType=media&name={quote(name, safe='')}")
    headers = {"Authorization": f"Bearer {bearer_token(access)}",
               "Content-Type": guess_content_type(name), "Content-Length": str(data.size)}
    try:
        with data.open() as body:
            response = client.post(url, content=_read(body), headers=headers)
    except httpx.HTTPError as exc:
        raise StorageError(f"GCS upload gs://{access.bucket}/{name}: "
                           f"{type(exc).__name__}") from exc
    if response.status_code != 200:
        raise StorageError(f"GCS upload gs://{access.bucket}/{name} failed: "
                           f"HTTP {response.status_code}")


def _read(body: BinaryIO) -> Iterator[bytes]:
    while chunk := body.read(_CHUNK):
        yield chunk
