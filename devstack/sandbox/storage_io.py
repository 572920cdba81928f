"""Storage I/O for the sandbox, shared by every provider dialect: downloads from URLs, S3 reads
and writes made with exactly the credentials a task carried, and the in-memory store behind the
sandbox's own download URLs. A real provider can reach nothing it was not granted, so neither may
the sandbox: S3 clients are built from an isolated botocore session that ignores the ambient
environment (AWS_PROFILE, config files, AWS_ENDPOINT_URL*), and a too-narrow grant fails here as
it would at the provider. Errors become `StorageError` with a message that is safe to show in an
API response (no signatures, no keys)."""

from __future__ import annotations

import mimetypes
import os
import posixpath
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote, urlsplit

import botocore.session
import httpx
from botocore.config import Config
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import create_loader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DOWNLOAD_TIMEOUT_SECONDS = 30.0


class StorageError(Exception):
    """A read or write that the storage refused or that could not reach it."""


@dataclass(frozen=True)
class FileBlob:
    """One file travelling between tasks."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class S3Access:
    """Where an S3 task reads or writes, and the only credentials it may use to do so."""

    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    endpoint: str | None = None


def _isolated_session_vars() -> dict[str, tuple[object, object, object, object]]:
    # Every botocore setting keeps its default but loses its env var and config-file source,
    # and the shared config/credentials files point at nothing, so a developer's profile can
    # neither lend credentials nor redirect the endpoint.
    isolated: dict[str, tuple[object, object, object, object]] = {}
    for name, (_config_key, _env, default, convert) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        if name in ("config_file", "credentials_file"):
            default = os.devnull
        isolated[name] = (None, None, default, convert)
    return isolated


_S3_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    ignore_configured_endpoint_urls=True,  # type: ignore[call-arg]  # stubs lag botocore
    retries={"max_attempts": 1, "mode": "standard"},
    connect_timeout=10,
    read_timeout=60,
)

# One loader for all sessions: it caches the parsed service models, which would otherwise be
# read from disk again for every task (~50 ms each).
_LOADER = create_loader()


def s3_client(access: S3Access) -> S3Client:
    """An S3 client that can only act with `access`'s own credentials and endpoint."""
    session = botocore.session.Session(session_vars=_isolated_session_vars())
    session.register_component("data_loader", _LOADER)
    client = session.create_client(
        "s3",
        region_name=access.region,
        endpoint_url=access.endpoint or None,
        aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret_access_key,
        aws_session_token=access.session_token or None,
        config=_S3_CONFIG,
    )
    return cast("S3Client", client)


def _s3_error(action: str, access: S3Access, key: str, exc: Exception) -> StorageError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or str(exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", "Error"))
        detail = f"{code}: {error.get('Message') or 'no message'}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return StorageError(f"S3 {action} s3://{access.bucket}/{key} failed: {detail}")


def read_s3(access: S3Access, key: str | None, key_prefix: str | None) -> list[tuple[str, bytes]]:
    """(key, bytes) for `key`, or for every object under `key_prefix`."""
    client = s3_client(access)
    keys: list[str]
    try:
        if key is not None:
            keys = [key]
        else:
            keys = []
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=access.bucket, Prefix=key_prefix or ""):
                keys.extend(
                    item["Key"] for item in page.get("Contents", [])
                    if not item["Key"].endswith("/")
                )
            if not keys:
                raise StorageError(f"no objects under s3://{access.bucket}/{key_prefix or ''}")
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error("list", access, key_prefix or "", exc) from exc
    objects = []
    for each in keys:
        try:
            body = client.get_object(Bucket=access.bucket, Key=each)["Body"]
            objects.append((each, body.read()))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error("GetObject", access, each, exc) from exc
    return objects


def write_s3(
    access: S3Access,
    key: str,
    data: bytes,
    *,
    content_type: str | None = None,
    acl: str | None = None,
    cache_control: str | None = None,
    metadata: dict[str, str] | None = None,
    server_side_encryption: str | None = None,
    tagging: str | None = None,
) -> None:
    """PutObject with only the options that were asked for, so a grant without
    s3:PutObjectAcl still works when no ACL is requested."""
    params: dict[str, Any] = {
        "Bucket": access.bucket,
        "Key": key,
        "Body": data,
        "ContentType": content_type or guess_content_type(key),
    }
    optional = {
        "ACL": acl,
        "CacheControl": cache_control,
        "Metadata": metadata,
        "ServerSideEncryption": server_side_encryption,
        "Tagging": tagging,
    }
    params.update({name: value for name, value in optional.items() if value})
    try:
        s3_client(access).put_object(**params)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error("PutObject", access, key, exc) from exc


def public_url_form(url: str) -> str:
    """The URL without user info, query or fragment: that is where URLs carry credentials
    (presigned signatures, SAS tokens, per-job callback tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def filename_from_url(url: str) -> str:
    """The percent-decoded last path segment, as a provider names a download."""
    name = posixpath.basename(unquote(urlsplit(url).path))
    return name or "file"


def fetch_url(url: str, headers: dict[str, str] | None = None) -> bytes:
    """GET `url` (following redirects); anything but 2xx is a StorageError."""
    shown = public_url_form(url)
    try:
        # trust_env=False: the sandbox is offline by design and must not pick up proxies.
        with httpx.Client(
            follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_SECONDS, trust_env=False
        ) as client:
            response = client.get(url, headers=headers or {})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StorageError(f"Download from {shown} failed: {type(exc).__name__}: {exc}") from exc
    if not response.is_success:
        raise StorageError(
            f"Download from {shown} failed with HTTP {response.status_code} "
            f"{response.reason_phrase}"
        )
    return response.content


def guess_content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


@dataclass(frozen=True)
class StoredFile:
    filename: str
    data: bytes
    content_type: str


class FileStore:
    """Files the sandbox serves at /files/{token}/{filename}; the random token is the only
    access control, as with a provider's export URLs."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()

    def add(self, blob: FileBlob) -> str:
        """Store `blob` and return its path below the sandbox's base URL."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._files[token] = StoredFile(
                blob.filename, blob.data, guess_content_type(blob.filename)
            )
        return f"/files/{token}/{quote(blob.filename)}"

    def get(self, token: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(token)
