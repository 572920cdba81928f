"""Storage I/O for the sandbox, shared by every provider dialect: downloads from URLs, S3 reads
and writes made with exactly the credentials a task carried, and the file store behind the
sandbox's own download URLs. Files travel in memory while small and spill to a temporary
directory once they pass SPILL_BYTES, so a 1 GiB import or export never sits in the process's
memory and is served from disk with sendfile. A real provider can reach nothing it was not
granted, so neither may the sandbox: S3 clients are built from an isolated botocore session that
ignores the ambient environment (AWS_PROFILE, config files, AWS_ENDPOINT_URL*), and a too-narrow
grant fails here as it would at the provider. Errors become `StorageError` with a message that is
safe to show in an API response (no signatures, no keys)."""

from __future__ import annotations

import functools
import io
import mimetypes
import os
import posixpath
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
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
# Files larger than this live on disk, not in memory.
SPILL_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class StorageError(Exception):
    """A read or write that the storage refused or that could not reach it."""


@dataclass(frozen=True)
class FileBlob:
    """One file travelling between tasks: in memory (`data`) while small, else on disk
    (`path`, owned by the Spool that wrote it)."""

    filename: str
    data: bytes = b""
    path: Path | None = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path is not None else self.data

    def open(self) -> BinaryIO:
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.data)


class Spool:
    """Makes FileBlobs, spilling any larger than `threshold` bytes into one private temporary
    directory that close() removes."""

    def __init__(self, threshold: int = SPILL_BYTES) -> None:
        self.threshold = threshold
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def _new_path(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="convbridge-sandbox-"))
            directory = self._dir
        return directory / secrets.token_hex(16)

    def blob(self, filename: str, data: bytes) -> FileBlob:
        if len(data) <= self.threshold:
            return FileBlob(filename, data)
        path = self._new_path()
        path.write_bytes(data)
        return FileBlob(filename, path=path)

    def blob_from_chunks(self, filename: str, chunks: Iterable[bytes]) -> FileBlob:
        """Buffer `chunks` in memory until they pass the threshold, then on disk. A failure
        while reading leaves no file behind."""
        buffered: list[bytes] = []
        size = 0
        chunks = iter(chunks)
        for chunk in chunks:
            buffered.append(chunk)
            size += len(chunk)
            if size > self.threshold:
                break
        else:
            return FileBlob(filename, b"".join(buffered))
        path = self._new_path()
        try:
            with path.open("wb") as out:
                out.writelines(buffered)
                buffered.clear()
                for chunk in chunks:
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return FileBlob(filename, path=path)

    def discard(self, blob: FileBlob) -> None:
        if blob.path is not None:
            blob.path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


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


@functools.cache
def _isolated_session() -> botocore.session.Session:
    """One isolated session for every client: building a session registers botocore's
    handlers anew (~25 ms of CPU), and every job's grant brings new credentials, so a session
    per client made the sandbox, not the bridge, the bottleneck of a 2,000-upload burst.
    Clients still carry only the credentials given to :func:`s3_client`."""
    session = botocore.session.Session(session_vars=_isolated_session_vars())
    session.register_component("data_loader", _LOADER)
    return session


#: botocore sessions are not safe to build clients from on several threads at once
_SESSION_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def s3_client(access: S3Access) -> S3Client:
    """An S3 client that can only act with `access`'s own credentials and endpoint. Cached
    per S3Access (botocore clients are thread-safe): building one costs ~7 ms, which adds up
    over hundreds of jobs with the same grant."""
    with _SESSION_LOCK:
        client = _isolated_session().create_client(
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


def read_s3(
    access: S3Access, key: str | None, key_prefix: str | None, spool: Spool
) -> list[tuple[str, FileBlob]]:
    """(key, blob named after the key's last segment) for `key`, or for every object under
    `key_prefix`; large objects are streamed to disk."""
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
    objects: list[tuple[str, FileBlob]] = []
    try:
        for each in keys:
            try:
                body = client.get_object(Bucket=access.bucket, Key=each)["Body"]
                blob = spool.blob_from_chunks(
                    each.rsplit("/", 1)[-1], body.iter_chunks(_READ_CHUNK)
                )
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error("GetObject", access, each, exc) from exc
            objects.append((each, blob))
    except BaseException:
        for _, blob in objects:
            spool.discard(blob)
        raise
    return objects


def write_s3(
    access: S3Access,
    key: str,
    data: bytes | BinaryIO,
    *,
    content_type: str | None = None,
    acl: str | None = None,
    cache_control: str | None = None,
    metadata: dict[str, str] | None = None,
    server_side_encryption: str | None = None,
    tagging: str | None = None,
) -> None:
    """PutObject with only the options that were asked for, so a grant without
    s3:PutObjectAcl still works when no ACL is requested. `data` may be an open file, which
    botocore streams."""
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


def download_client() -> httpx.Client:
    """The client for import/url downloads. One is shared by all jobs (building one costs
    ~15 ms); trust_env=False because the sandbox is offline by design and must not pick up
    proxies."""
    return httpx.Client(follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_SECONDS, trust_env=False)


def fetch_url(
    client: httpx.Client, url: str, headers: dict[str, str] | None, spool: Spool, filename: str
) -> FileBlob:
    """GET `url` (following redirects) into a blob, streaming large bodies to disk; anything
    but 2xx, and any body cut short, is a StorageError."""
    shown = public_url_form(url)
    try:
        with client.stream("GET", url, headers=headers or {}) as response:
            if not response.is_success:
                raise StorageError(
                    f"Download from {shown} failed with HTTP {response.status_code} "
                    f"{response.reason_phrase}"
                )
            return spool.blob_from_chunks(filename, response.iter_bytes(_READ_CHUNK))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StorageError(f"Download from {shown} failed: {type(exc).__name__}: {exc}") from exc


def guess_content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


@dataclass(frozen=True)
class StoredFile:
    filename: str
    blob: FileBlob
    content_type: str


class FileStore:
    """Files the sandbox serves at /files/{token}/{filename}; the random token is the only
    access control, as with a provider's export URLs. Stores references only: a blob on disk
    stays on disk and is served from there."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._paths: set[Path] = set()
        self._lock = threading.Lock()

    def add(self, blob: FileBlob) -> str:
        """Serve `blob` and return its path below the sandbox's base URL."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._files[token] = StoredFile(
                blob.filename, blob, guess_content_type(blob.filename)
            )
            if blob.path is not None:
                self._paths.add(blob.path)
        return f"/files/{token}/{quote(blob.filename)}"

    def get(self, token: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(token)

    def serves(self, path: Path) -> bool:
        with self._lock:
            return path in self._paths
