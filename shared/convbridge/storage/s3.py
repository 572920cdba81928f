"""Amazon S3 (and S3-compatible servers): scoped grants and streaming I/O.

Read grants are a SigV4 presigned GET for the one key, or STS AssumeRole credentials whose
inline session policy allows only ``s3:GetObject`` on that object's ARN. Write grants are STS
credentials allowing only ``s3:PutObject`` on the job's own output key (and, for jobs with
several outputs, the folder named after it). The role assumed carries the broad base
permissions; the session policy is the intersection that actually reaches the provider.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import botocore.exceptions
from botocore.config import Config

from convbridge.errors import GrantError, OutputCollision, StaleWrite, StorageError
from convbridge.model import SOURCE_TAG, Grant, GrantKind, ObjectRef, OutputTarget
from convbridge.storage.base import Storage

if TYPE_CHECKING:
    from convbridge.clients import CloudClients
    from convbridge.settings import Settings

#: S3's own floor for multipart parts; also the most the relay holds in memory per upload.
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
#: STS rejects inline session policies longer than this.
MAX_SESSION_POLICY = 2048
#: In IAM resource ARNs ``*`` and ``?`` are wildcards and ``${...}`` a policy variable: a key
#: holding them would make a grant that reaches other objects. IAM's escapes (``${*}``) are not
#: understood by every S3 server (SeaweedFS reads them literally and denies the real key), so
#: no STS grant is minted for such a key: reads fall back to a presigned URL, writes to the relay.
_IAM_SPECIAL = re.compile(r"[*?$]")

#: what S3 answers when a conditional write's condition does not hold
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})

#: pool size matches the batch record workers, so concurrent records reuse connections
S3_CLIENT_CONFIG = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          max_pool_connections=32)


def object_arn(bucket: str, key: str) -> str:
    """The ARN naming exactly ``key``; GrantError for a key IAM would read as a pattern."""
    if _IAM_SPECIAL.search(key):
        raise GrantError("the key holds '*', '?' or '$', which IAM reads as wildcards or "
                         "variables: no STS grant can name exactly this object")
    return f"arn:aws:s3:::{bucket}/{key}"


def session_policy(action: str, resources: list[str]) -> str:
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": [action], "Resource": resources}],
    }
    # STS counts characters: \u-escaping non-ASCII keys would spend six per character
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def session_name(purpose: str, bucket: str, key: str) -> str:
    """RoleSessionName must be 2-64 of ``[\\w+=,.@-]``; a digest keeps it unique per object and
    traceable in CloudTrail without putting the (possibly hostile) key in it."""
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:32]
    return f"convbridge-{purpose}-{digest}"


class S3Storage(Storage):
    name: ClassVar[str] = "s3"
    write_grant_kinds: ClassVar[tuple[GrantKind, ...]] = ("sts_session",)
    read_grant_kinds: ClassVar[frozenset[GrantKind]] = frozenset({"presigned_url", "sts_session"})
    event_formats: ClassVar[tuple[str, ...]] = (
        "S3 event notification", "EventBridge Object Created", "either through SQS or SNS")
    #: how this store's S3 client signs, addresses and pools
    client_config: ClassVar[Config] = S3_CLIENT_CONFIG

    @classmethod
    def configured_endpoint(cls, settings: Settings) -> str | None:
        """The server this store's client reaches; None: AWS's own. An S3-compatible store
        (MinIO, R2) is a subclass with its own ``name`` answering its own endpoint here."""
        return settings.s3_endpoint_url

    @classmethod
    def s3_client(cls, settings: Settings, clients: CloudClients) -> Any:
        return clients.client("s3", config=cls.client_config,
                              endpoint_url=cls.configured_endpoint(settings))

    @classmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> S3Storage:
        return cls(
            s3_client=cls.s3_client(settings, clients),
            sts_client=clients.client("sts") if settings.grant_role_arn else None,
            grant_role_arn=settings.grant_role_arn,
            region=settings.region,
            endpoint_url=cls.configured_endpoint(settings),
        )

    def __init__(
        self,
        *,
        s3_client: Any,
        sts_client: Any = None,
        grant_role_arn: str | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
    ) -> None:
        self._s3 = s3_client
        self._sts = sts_client
        self._grant_role_arn = grant_role_arn
        self.region = region
        #: handed to providers so they reach the same S3-compatible server the bridge uses
        self.endpoint_url = endpoint_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        scope = f"s3:GetObject on s3://{ref.location}/{ref.key}"
        if kind == "presigned_url":
            params = {"Bucket": ref.location, "Key": ref.key}
            try:
                url = self._s3.generate_presigned_url(
                    "get_object", Params=params, ExpiresIn=ttl_seconds
                )
            except botocore.exceptions.BotoCoreError as exc:
                raise GrantError(f"cannot presign a read of {ref}: {exc}") from exc
            return Grant(
                kind="presigned_url", storage=self.name, location=ref.location, key=ref.key,
                scope=scope, expires_at=expires, region=self.region,
                endpoint=self.endpoint_url, url=url,
            )
        if kind == "sts_session":
            policy = session_policy("s3:GetObject", [object_arn(ref.location, ref.key)])
            secret, expires = self._assume(session_name("read", ref.location, ref.key), policy,
                                           ttl_seconds)
            return Grant(
                kind="sts_session", storage=self.name, location=ref.location, key=ref.key,
                scope=scope, expires_at=expires, region=self.region,
                endpoint=self.endpoint_url, secret=secret,
            )
        raise GrantError(f"s3 cannot mint a read grant of kind {kind!r}")

    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        """Exactly the output key and the folder ``<output key>/`` for several outputs; the
        rules refuse sources that would put another source's outputs in either
        (Rule.naming_conflict)."""
        folder = f"{target.key}/"
        resources = [object_arn(target.location, target.key),
                     object_arn(target.location, folder) + "*"]
        # No s3:if-none-match condition: SeaweedFS (4.48), the server proving these grants,
        # denies every PutObject under it, with the If-None-Match header or without, so it
        # cannot be shown to work and would break native exports. The relay's own writes are
        # conditional instead (put_bytes, _multipart).
        policy = session_policy("s3:PutObject", resources)
        secret, expires = self._assume(session_name("write", target.location, target.key), policy,
                                       ttl_seconds)
        return Grant(
            kind="sts_session", storage=self.name, location=target.location, key=target.key,
            prefix=folder,
            scope=f"s3:PutObject on s3://{target.location}/{target.key} and {folder}*",
            expires_at=expires, region=self.region, endpoint=self.endpoint_url, secret=secret,
        )

    def _assume(self, name: str, policy: str, ttl_seconds: int) -> tuple[dict[str, str], datetime]:
        if self._sts is None or not self._grant_role_arn:
            raise GrantError("STS grants need CONVBRIDGE_GRANT_ROLE_ARN and an STS client")
        if len(policy) > MAX_SESSION_POLICY:
            raise GrantError(
                f"session policy is {len(policy)} characters, over the STS limit of "
                f"{MAX_SESSION_POLICY}; the key is too long for an STS grant"
            )
        with _aws_errors("AssumeRole on the grant role failed", GrantError):
            answer = self._sts.assume_role(
                RoleArn=self._grant_role_arn,
                RoleSessionName=name,
                Policy=policy,
                # STS refuses less than 15 minutes; role chaining caps it at one hour.
                DurationSeconds=min(max(ttl_seconds, 900), 3600),
            )
        creds = answer["Credentials"]
        secret = {
            "access_key_id": creds["AccessKeyId"],
            "secret_access_key": creds["SecretAccessKey"],
            "session_token": creds["SessionToken"],
        }
        expiration = creds["Expiration"]
        if not isinstance(expiration, datetime):
            expiration = datetime.fromisoformat(str(expiration))
        return secret, expiration

    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        with _aws_errors(f"cannot read s3://{location}/{key}"):
            body = self._s3.get_object(Bucket=location, Key=key)["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def write_stream(
        self,
        location: str,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        expected_size: int | None = None,
    ) -> int:
        part = _PartBuffer(PART_SIZE)
        stream = _ChunkStream(chunks)
        part.fill(stream)
        if not part.full:
            data = part.getvalue()
            _check_size(location, key, len(data), expected_size)
            self.put_bytes(location, key, data, content_type=content_type,
                           metadata=metadata or {})
            return len(data)
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": dict(metadata or {})}
        condition = (self._output_condition(location, key, metadata)
                     if SOURCE_TAG in (metadata or {}) else {})
        return self._multipart(location, key, part, stream, extra, expected_size, condition)

    def output_precondition(self, location: str, key: str,
                            metadata: Mapping[str, str] | None) -> str | None:
        """The ETag to replace (S3's version, used by ``stat``, is the VersionId when the
        bucket is versioned, and conditional writes match ETags)."""
        if super().output_precondition(location, key, metadata) is None:
            return None
        with _aws_errors(f"cannot stat s3://{location}/{key}"):
            return str(self._s3.head_object(Bucket=location, Key=key)["ETag"])

    def _output_condition(self, location: str, key: str,
                          metadata: Mapping[str, str] | None) -> dict[str, str]:
        """Create-only (``If-None-Match: *``), or replace only the same source's output: moto
        and SeaweedFS both refuse an If-None-Match PutObject and CompleteMultipartUpload onto
        an existing key; moto ignores If-Match on CompleteMultipartUpload, where the check
        before the upload is then all that holds."""
        replacing = self.output_precondition(location, key, metadata)
        return {"IfMatch": replacing} if replacing else {"IfNoneMatch": "*"}

    def _multipart(
        self,
        location: str,
        key: str,
        part: _PartBuffer,
        rest: _ChunkStream,
        extra: dict[str, Any],
        expected_size: int | None,
        condition: dict[str, str],
    ) -> int:
        """Multipart upload through two reused part buffers: one uploads on a helper thread
        while the next fills from the stream, so download and upload overlap and memory stays
        at two parts whatever the size. Nothing appears under ``key`` until
        CompleteMultipartUpload, which happens only after the byte count is checked; any
        failure aborts the upload."""
        upload_id = self._s3.create_multipart_upload(Bucket=location, Key=key, **extra)["UploadId"]
        parts: list[dict[str, Any]] = []
        total = 0
        spare = _PartBuffer(PART_SIZE)

        def upload(buffer: _PartBuffer, number: int) -> dict[str, Any]:
            answer = self._s3.upload_part(Bucket=location, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=buffer.reader())
            return {"PartNumber": number, "ETag": answer["ETag"]}

        uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convbridge-part")
        in_flight: Future[dict[str, Any]] | None = None
        try:
            while part.length:
                total += part.length
                in_flight = uploader.submit(upload, part, len(parts) + 1)
                part, spare = spare, part  # fill one buffer while the other uploads
                part.fill(rest)
                parts.append(in_flight.result())
                in_flight = None
            _check_size(location, key, total, expected_size)
            self._s3.complete_multipart_upload(
                Bucket=location, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException as exc:
            if in_flight is not None:
                with contextlib.suppress(BaseException):
                    in_flight.result()  # never abort under an upload still running
            self._s3.abort_multipart_upload(Bucket=location, Key=key, UploadId=upload_id)
            if condition and _error_code(exc) in _PRECONDITION_CODES:
                raise _collision(location, key) from exc
            if isinstance(exc, _AWS_ERRORS):
                raise StorageError(f"cannot write s3://{location}/{key}: {_describe(exc)}") from exc
            raise
        finally:
            uploader.shutdown(wait=True)
        return total

    def put_bytes(
        self,
        location: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        if_revision: str | None = None,
        if_absent: bool = False,
    ) -> str:
        output = SOURCE_TAG in metadata and not if_revision and not if_absent
        condition = (self._output_condition(location, key, metadata) if output
                     else {"IfMatch": if_revision} if if_revision
                     else {"IfNoneMatch": "*"} if if_absent else {})
        try:
            answer = self._s3.put_object(Bucket=location, Key=key, Body=data,
                                         ContentType=content_type, Metadata=dict(metadata),
                                         **condition)
        except botocore.exceptions.ClientError as exc:
            if condition and _error_code(exc) in _PRECONDITION_CODES:
                if output:
                    raise _collision(location, key) from exc
                raise StaleWrite(f"s3://{location}/{key} " + (
                    f"changed since {if_revision}" if if_revision else "already exists")) from exc
            raise StorageError(f"cannot write s3://{location}/{key}: {_describe(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"cannot write s3://{location}/{key}: {exc}") from exc
        return str(answer.get("ETag", ""))

    def delete(self, location: str, key: str) -> None:
        with _aws_errors(f"cannot delete s3://{location}/{key}"):
            self._s3.delete_object(Bucket=location, Key=key)

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        with _aws_errors(f"cannot list s3://{location}/{prefix}"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=location,
                                                                       Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"])

    def copy(self, location: str, source_key: str, target_key: str) -> int:
        found = self.stat(location, source_key)
        if found is None:
            raise StorageError(f"cannot copy s3://{location}/{source_key}: it does not exist")
        if (found.size or 0) > 5 * 1024**3:
            return super().copy(location, source_key, target_key)  # CopyObject stops at 5 GiB
        with _aws_errors(f"cannot copy s3://{location}/{source_key}"):
            self._s3.copy_object(Bucket=location, Key=target_key,
                                 CopySource={"Bucket": location, "Key": source_key})
        return found.size or 0

    def read_revision(self, location: str, key: str) -> tuple[bytes, str] | None:
        """One GetObject: its ETag is what If-Match compares (``stat`` names the VersionId
        in a versioned bucket)."""
        def read() -> tuple[bytes, str]:
            answer = self._s3.get_object(Bucket=location, Key=key)
            return bytes(answer["Body"].read()), str(answer.get("ETag", ""))

        return _unless_missing(read, f"cannot read s3://{location}/{key}")

    def stat(self, location: str, key: str) -> ObjectRef | None:
        head = _unless_missing(lambda: self._s3.head_object(Bucket=location, Key=key),
                               f"cannot stat s3://{location}/{key}")
        if head is None:
            return None
        version = head.get("VersionId") or str(head.get("ETag", "")).strip('"') or None
        return ObjectRef(
            storage=self.name, location=location, key=key, version=version,
            size=int(head.get("ContentLength", 0)), metadata=dict(head.get("Metadata", {})),
        )


class _ChunkStream:
    """An iterator of chunks that can hand out exactly as many bytes as a buffer has room for,
    keeping the rest of a chunk for the next buffer."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._carry = memoryview(b"")

    def take(self, limit: int) -> memoryview:
        while not self._carry:
            chunk = next(self._chunks, None)
            if chunk is None:
                return memoryview(b"")
            self._carry = memoryview(chunk)
        piece, self._carry = self._carry[:limit], self._carry[limit:]
        return piece


class _PartBuffer:
    """A fixed, reused buffer for one multipart part."""

    def __init__(self, size: int) -> None:
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self.length = 0

    @property
    def full(self) -> bool:
        return self.length == len(self._buffer)

    def fill(self, stream: _ChunkStream) -> None:
        self.length = 0
        while not self.full:
            piece = stream.take(len(self._buffer) - self.length)
            if not piece:
                break
            self._view[self.length:self.length + len(piece)] = piece
            self.length += len(piece)

    def getvalue(self) -> bytes:
        return bytes(self._view[:self.length])

    def reader(self) -> io.BufferedReader:
        return io.BufferedReader(_ViewReader(self._view[:self.length]))


class _ViewReader(io.RawIOBase):
    """A seekable read-only file over a memoryview: botocore reads a part twice (checksum,
    then send) without it ever being copied whole."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        count = min(len(target), len(self._view) - self._position)
        target[:count] = self._view[self._position:self._position + count]
        self._position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _check_size(location: str, key: str, written: int, expected: int | None) -> None:
    if expected is not None and written != expected:
        raise StorageError(f"s3://{location}/{key}: got {written} bytes, expected {expected}; "
                           "nothing was written")


def _error_code(exc: BaseException) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def _collision(location: str, key: str) -> OutputCollision:
    return OutputCollision(f"s3://{location}/{key} was taken by another object while the "
                           "output was written; it was left as it is")


#: what _unless_missing returns when the object is there
Found = TypeVar("Found")

#: what botocore raises for a request that failed: no answer (BotoCoreError) or AWS's refusal
#: (ClientError)
_AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@contextlib.contextmanager
def _aws_errors(doing: str, error: type[StorageError] = StorageError) -> Iterator[None]:
    """botocore's exceptions as ``error``: what was being done, then AWS's code and message."""
    try:
        yield
    except _AWS_ERRORS as exc:
        raise error(f"{doing}: {_describe(exc)}") from exc


#: the codes S3 answers for an object that is not there (GetObject, HeadObject)
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _unless_missing(call: Callable[[], Found], doing: str) -> Found | None:
    """``call()``'s answer, or None when the object is not there; any other error of
    botocore's as StorageError, saying what was being done."""
    try:
        return call()
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING:
            return None
        raise StorageError(f"{doing}: {_describe(exc)}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"{doing}: {exc}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    return str(exc)
