"""Google Cloud Storage: V4 signed reads, relayed writes, generation preconditions on every write.

A read grant is a V4 signed URL for GET of the one object, pinned to the generation that
started the job, valid for the configured read lifetime (never more than GCS's 7 days). By
default it is signed through IAM Credentials ``signBlob`` by a service account the bridge
reaches through Workload Identity Federation from its AWS role, holding no key; a service-account
JSON key signs only when the secret opts in (see convbridge.storage.gcs_identity). GCS has no
write credential a provider accepts that is narrower than a whole service-account key, so
outputs are relayed through the bridge. The one exception is opt-in: a rule with
``hand_over_account: true`` gets
``gcs_service_account`` write grants (see convbridge.planner), which hand the provider a
dedicated export key read from the secret CONVBRIDGE_GCS_EXPORT_KEY_SECRET. That key is never
the signing key, and it is not scoped: it reaches whatever its service account can, and does
not expire with the grant. Every write the bridge makes itself names the generation it expects
to replace (0: the object must not exist yet), so a retried write never replaces an object
someone else wrote in the meantime, and google-cloud-storage's own retries, which it enables
only for writes with such a precondition, are safe.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlparse

import httpx

from convbridge.errors import (
    ConfigError,
    ConvbridgeError,
    GrantError,
    OutputCollision,
    SecretError,
    StaleWrite,
    StorageError,
    VendorError,
    vendor_errors,
)
from convbridge.http import make_client
from convbridge.model import SOURCE_TAG, Grant, GrantKind, ObjectRef, OutputTarget
from convbridge.storage._vendor import VendorModule
from convbridge.storage.base import Storage
from convbridge.storage.gcs_identity import IAM_CREDENTIALS_URL, gcs_identity

if TYPE_CHECKING:
    import google.api_core.exceptions as _api_errors
    import google.auth.credentials as _auth_credentials
    import google.auth.exceptions as _auth_errors
    import google.cloud.storage as _gcs_sdk

    from convbridge.clients import CloudClients
    from convbridge.secrets import SecretValue
    from convbridge.settings import Settings
else:
    _api_errors = VendorModule("google.api_core.exceptions")
    _auth_credentials = VendorModule("google.auth.credentials")
    _auth_errors = VendorModule("google.auth.exceptions")
    _gcs_sdk = VendorModule("google.cloud.storage")

#: GCS refuses V4 signatures valid for longer than this.
MAX_SIGNED_URL_SECONDS = 7 * 24 * 3600
#: Resumable upload chunks must be whole multiples of this (GCS's rule).
CHUNK_GRANULE = 256 * 1024
#: Bytes per resumable upload request; an output no larger than this is written in a single
#: request instead. Fewer, larger pieces are faster (each request costs the server a round of
#: bookkeeping) but a relay holds a few pieces in memory: 16 MiB keeps a 1 GiB relay well
#: under 200 MB (bench/relay.py measures both).
UPLOAD_CHUNK = 16 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
#: How long the generation a failed write expected binds the next write of the same object.
#: The relay starts its next attempt at once, so this covers its retries and little more.
RETRY_BINDING_SECONDS = 60.0


def storage_client(credentials: Any, endpoint: str | None, *, project: str | None = None) -> Any:
    """A client for GCS itself, or for ``endpoint``, authorised by ``credentials`` (a JSON key's
    service account or the federated one). An ``http://`` endpoint is an emulator and gets no
    credentials: Google serves HTTPS only, and a bearer token must not travel in clear. An
    ``https://`` endpoint (regional, Private Service Connect) gets the credentials."""
    options: dict[str, str] = {}
    sent: Any = credentials
    if endpoint is not None:
        scheme = urlparse(endpoint).scheme
        if scheme not in {"http", "https"}:
            raise ConfigError(f"CONVBRIDGE_GCS_ENDPOINT={endpoint!r} is not an http(s) URL")
        options["api_endpoint"] = endpoint.rstrip("/")
        if scheme == "http":
            sent = _auth_credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
    # fails e.g. for a key from another universe domain than the endpoint's
    with _google_errors(_Call("cannot build a GCS client", "client")):
        client = _gcs_sdk.Client(project=project or getattr(credentials, "project_id", None),
                                 credentials=sent,
                                 client_options=options or None)
    return client


@dataclass(frozen=True)
class ExportKey:
    """The dedicated service-account key handed to a provider's GCS export, for rules that opt
    in. Not scoped: it reaches everything its service account is granted."""

    project_id: str
    client_email: str
    private_key: str = field(repr=False)


def export_key(name: str, secret: SecretValue) -> ExportKey:
    """The export key in secret ``name``: a JSON key file as Google issues it."""
    key = ExportKey(project_id=secret.optional("project_id") or "",
                    client_email=secret.field("client_email"),
                    private_key=secret.field("private_key"))
    if not key.project_id:
        raise SecretError(f"secret {name} has no project_id; a provider's GCS export needs it")
    return key


class GcsStorage(Storage):
    name: ClassVar[str] = "gcs"
    #: only ever planned for rules with ``hand_over_account: true`` (see convbridge.planner)
    write_grant_kinds: ClassVar[tuple[GrantKind, ...]] = ("gcs_service_account",)
    event_formats: ClassVar[tuple[str, ...]] = (
        "Pub/Sub push of an object notification", "CloudEvents object finalized")
    grant_signing: ClassVar[str | None] = (
        "IAM Credentials signBlob as the secret's service_account_email (federated from the "
        "AWS role, no key held); a service-account JSON key only when the secret says "
        "\"signing\": \"json_key\" (opt-in)")

    @classmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> GcsStorage:
        secret_name = settings.required("GCS_SERVICE_ACCOUNT_SECRET",
                                        "to reach GCS and sign read URLs")
        identity = gcs_identity(
            secret_name, clients.secrets.get(secret_name),
            iam_credentials_url=settings.value("GCS_IAM_CREDENTIALS_URL", IAM_CREDENTIALS_URL)
            or IAM_CREDENTIALS_URL,
            http=make_client(settings.http_timeout_seconds))
        export_name = settings.value("GCS_EXPORT_KEY_SECRET")
        if export_name and export_name == secret_name:
            raise ConfigError("CONVBRIDGE_GCS_EXPORT_KEY_SECRET must name a dedicated export "
                              "key, not the signing key of CONVBRIDGE_GCS_SERVICE_ACCOUNT_SECRET")

        def exporter() -> ExportKey | None:
            # read per grant, so a rotated key is picked up (SecretStore caches)
            if not export_name:
                return None
            return export_key(export_name, clients.secrets.get(export_name))

        client = storage_client(identity.client_credentials, settings.value("GCS_ENDPOINT"),
                                project=identity.project_id)
        return cls(client=client, signer=identity.signer,
                   upload_http=make_client(settings.http_timeout_seconds), export_key=exporter)

    def __init__(
        self,
        *,
        client: Any,
        signer: Any,
        upload_http: httpx.Client | None = None,
        chunk_size: int = UPLOAD_CHUNK,
        export_key: Callable[[], ExportKey | None] | None = None,
    ) -> None:
        """``signer`` signs read URLs: a google-auth ``Signing`` (a JSON key's credentials, or
        :class:`~convbridge.storage.gcs_identity.FederatedSigning`)."""
        if chunk_size <= 0 or chunk_size % CHUNK_GRANULE:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_GRANULE}")
        self._client = client
        self._signer = signer
        self._export_key = export_key or (lambda: None)
        # resumable session URLs authorise their own requests, so a plain client suffices
        self._http = upload_http or make_client(60.0)
        self._chunk_size = chunk_size
        self._bindings: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"GcsStorage(endpoint={self._client.api_endpoint!r}, "
                f"signer={self._signer.signer_email!r})")

    # grants

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        if kind != "presigned_url":
            raise GrantError(f"gcs cannot mint a read grant of kind {kind!r}")
        seconds = max(1, min(ttl_seconds, MAX_SIGNED_URL_SECONDS))
        generation = int(ref.version) if ref.version and ref.version.isdigit() else None
        blob = self._client.bucket(ref.location).blob(ref.key)
        with _google_errors(_Call(f"cannot sign a read of {ref}", "sign")):
            # The signature covers the method, the object path, the expiry, the host and the
            # generation, and nothing else is granted; pinning the generation means the job
            # converts exactly the upload that started it, even if the object is replaced.
            url = blob.generate_signed_url(version="v4", method="GET",
                                           expiration=timedelta(seconds=seconds),
                                           credentials=self._signer, generation=generation)
        pinned = f" generation {generation}" if generation is not None else ""
        return Grant(
            kind="presigned_url", storage=self.name, location=ref.location, key=ref.key,
            scope=f"GET of gs://{ref.location}/{ref.key}{pinned}",
            expires_at=datetime.now(UTC) + timedelta(seconds=seconds), url=str(url),
        )

    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        """Planned only for rules with ``hand_over_account: true``: a provider's GCS export
        needs a whole service-account key, which is wider than one output. Without a dedicated
        export key configured the output is relayed (GrantError)."""
        key = self._export_key()
        if key is None:
            raise GrantError("gcs outputs are relayed: no dedicated export key is configured "
                             "(CONVBRIDGE_GCS_EXPORT_KEY_SECRET)")
        if key.client_email == self._signer.signer_email:
            raise GrantError("gcs outputs are relayed: the export key is the signing key's "
                             "service account, which is never handed over "
                             "(CONVBRIDGE_GCS_EXPORT_KEY_SECRET needs its own)")
        return Grant(
            kind="gcs_service_account", storage=self.name, location=target.location,
            key=target.key,
            scope=(f"create gs://{target.location}/{target.key} with the dedicated export "
                   f"service account {key.client_email} (not scoped: its key reaches "
                   "everything that service account can, and does not expire with this grant)"),
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
            secret={"project_id": key.project_id, "client_email": key.client_email,
                    "private_key": key.private_key},
        )

    # reads

    def stat(self, location: str, key: str) -> ObjectRef | None:
        with _google_errors(_Call(f"cannot stat gs://{location}/{key}")):
            blob = self._client.bucket(location).get_blob(key)
        if blob is None:
            return None
        return ObjectRef(storage=self.name, location=location, key=key,
                         version=str(blob.generation), size=int(blob.size or 0),
                         metadata=dict(blob.metadata or {}))

    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        found = self.stat(location, key)
        if found is None:
            raise StorageError(f"cannot read gs://{location}/{key}: it does not exist")
        # every range names the generation stat saw: a read never splices two uploads
        blob = _gcs_sdk.Blob(key, self._client.bucket(location), generation=int(found.version or 0))
        size = found.size or 0
        call = _Call(f"cannot read gs://{location}/{key}",
                     absent=f"gs://{location}/{key} was replaced while being read")
        for start in range(0, size, READ_CHUNK):
            end = min(start + READ_CHUNK, size) - 1
            with _google_errors(call):
                piece = bytes(blob.download_as_bytes(start=start, end=end, raw_download=True))
            yield piece

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        with _google_errors(_Call(f"cannot list gs://{location}/{prefix}")):
            for blob in self._client.list_blobs(location, prefix=prefix):
                yield str(blob.name)

    # writes

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
        if if_revision is not None and not if_revision.isdigit():
            raise StaleWrite(f"gs://{location}/{key}: {if_revision!r} is not a generation")
        if if_revision is None and if_absent:  # if_generation_match=0: create only
            return self._upload_whole(location, key, data, content_type, metadata, 0)
        if if_revision is None and SOURCE_TAG in metadata:
            generation = self._output_generation(location, key, metadata)
            try:
                return self._upload_whole(location, key, data, content_type, metadata,
                                          generation)
            except StaleWrite as exc:
                raise _collision(location, key) from exc
        expected = int(if_revision) if if_revision is not None else None
        return self._upload_whole(location, key, data, content_type, metadata, expected)

    def _output_generation(self, location: str, key: str, metadata: Mapping[str, str]) -> int:
        """0 (``if_generation_match=0``: create only), or the generation of the same source's
        earlier output, the only object an output write may replace."""
        replacing = self.output_precondition(location, key, metadata)
        return int(replacing) if replacing is not None else 0

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
        """A failed write leaves the generation it expected bound to the object for the next
        write of it (the relay's next attempt): re-reading the generation then would adopt an
        object written by someone else in between and replace it."""
        output = SOURCE_TAG in (metadata or {})
        generation = self._expected_generation(location, key, metadata if output else None)
        try:
            return self._write(location, key, chunks, content_type, dict(metadata or {}),
                               expected_size, generation)
        except StaleWrite as exc:
            self._bind(location, key, generation)
            if output:
                raise _collision(location, key) from exc
            raise
        except BaseException:
            self._bind(location, key, generation)
            raise

    def _bind(self, location: str, key: str, generation: int) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [k for k, (_, at) in self._bindings.items()
                       if now - at >= RETRY_BINDING_SECONDS]
            for stale in expired:
                del self._bindings[stale]
            self._bindings[(location, key)] = (generation, now)

    def _expected_generation(self, location: str, key: str,
                             output_metadata: Mapping[str, str] | None) -> int:
        """The bound generation of a failed attempt, else the current one; for an output
        (``output_metadata`` given), only a free key or the same source's earlier output."""
        with self._lock:
            bound = self._bindings.pop((location, key), None)
        if bound is not None and time.monotonic() - bound[1] < RETRY_BINDING_SECONDS:
            return bound[0]
        if output_metadata is not None:
            return self._output_generation(location, key, output_metadata)
        found = self.stat(location, key)
        return int(found.version or 0) if found is not None else 0

    def _write(self, location: str, key: str, chunks: Iterable[bytes], content_type: str,
               metadata: dict[str, str], expected_size: int | None, generation: int) -> int:
        """One request when the stream fits a chunk, else a resumable session fed piece by
        piece. Not ``blob.open("wb")``: its close() finalises whatever was sent, and io.IOBase
        calls close() on garbage collection, which publishes a partial object after a failed
        stream (seen with fake-gcs-server)."""
        pieces = _pieces(chunks, self._chunk_size)
        piece, last = next(pieces)
        if last:
            _check_size(location, key, len(piece), expected_size, final=True)
            self._upload_whole(location, key, piece, content_type, metadata, generation)
            return len(piece)
        blob = self._client.bucket(location).blob(key)
        blob.metadata = metadata
        with _google_errors(_Call(f"cannot write gs://{location}/{key}")):
            session = str(blob.create_resumable_upload_session(
                content_type=content_type, size=expected_size, checksum=None,
                if_generation_match=generation))
        offset = 0
        try:
            while True:
                _check_size(location, key, offset + len(piece), expected_size, final=last)
                if last:
                    self._check_generation(location, key, generation)
                    self._put_piece(location, key, session, piece, offset, final=True)
                    return offset + len(piece)
                self._put_piece(location, key, session, piece, offset, final=False)
                offset += len(piece)
                piece, last = next(pieces)
        except BaseException:
            self._cancel(session)
            raise

    def _check_generation(self, location: str, key: str, generation: int) -> None:
        """Checked before the last piece, which is what publishes the object. GCS checks the
        session's precondition again when it finalises; this catches servers that do not
        (fake-gcs-server ignores preconditions on resumable uploads)."""
        found = self.stat(location, key)
        current = int(found.version or 0) if found is not None else 0
        if current != generation:
            raise StaleWrite(f"gs://{location}/{key} is at generation {current}, not the "
                             f"{generation} this write expected; it was left as it is")

    def _put_piece(self, location: str, key: str, session: str, piece: bytes, offset: int, *,
                   final: bool) -> None:
        total = str(offset + len(piece)) if final else "*"
        headers = {"Content-Range": f"bytes {offset}-{offset + len(piece) - 1}/{total}"}
        # httpx's errors are named by type only: the session URL they carry authorises
        # writing this upload
        with _google_errors(_Call(f"cannot write gs://{location}/{key}")):
            answer = self._http.put(session, content=piece, headers=headers)
        status = answer.status_code
        # httpx responses sit in a reference cycle (response <-> its bound stream) that holds
        # the request and so this 8 MiB piece; without a prompt collection every piece of a
        # large relay stays in memory until the cycle collector happens to run
        del answer
        gc.collect(1)
        expected = {200, 201} if final else {308}
        if status == 412:
            raise StaleWrite(f"gs://{location}/{key} changed while it was being written; "
                             "it was left as it is")
        if status not in expected:
            raise StorageError(f"cannot write gs://{location}/{key}: HTTP {status}")

    def _cancel(self, session: str) -> None:
        """Best effort: an abandoned session publishes nothing and expires after a week."""
        with contextlib.suppress(httpx.HTTPError):
            self._http.delete(session)

    def _upload_whole(self, location: str, key: str, data: bytes, content_type: str,
                      metadata: Mapping[str, str], generation: int | None) -> str:
        blob = self._client.bucket(location).blob(key)
        blob.metadata = dict(metadata)
        stale = (f"gs://{location}/{key} is no longer at generation {generation}; it was left "
                 "as it is") if generation is not None else None
        with _google_errors(_Call(f"cannot write gs://{location}/{key}", stale=stale)):
            blob.upload_from_string(data, content_type=content_type,
                                    if_generation_match=generation)
        return str(blob.generation)

    def delete(self, location: str, key: str) -> None:
        with _google_errors(_Call(f"cannot delete gs://{location}/{key}", absent_is_answer=True)):
            self._client.bucket(location).blob(key).delete()

    def copy(self, location: str, source_key: str, target_key: str) -> int:
        """Server-side rewrite, in as many calls as GCS needs for a large object; the copy
        keeps the source's metadata."""
        bucket = self._client.bucket(location)
        source, target = bucket.blob(source_key), bucket.blob(target_key)
        doing = f"cannot copy gs://{location}/{source_key}"
        with _google_errors(_Call(doing, absent=f"{doing}: it does not exist")):
            token, _, total = target.rewrite(source)
            while token is not None:
                token, _, total = target.rewrite(source, token=token)
        return int(total)


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """The stream cut into ``size``-byte pieces, each flagged True when it is the last. A piece
    is handed out only once a byte beyond it has arrived, so the last piece is known to be the
    last when it is sent and no empty closing request is needed."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) > size:
            yield bytes(buffer[:size]), False
            del buffer[:size]
    yield bytes(buffer), True


def _check_size(location: str, key: str, written: int, expected: int | None, *,
                final: bool) -> None:
    """Before each piece goes out: never more bytes than announced, and exactly as many by the
    last piece, so a short or overlong stream is cancelled before anything is published."""
    if expected is None or written == expected or (written < expected and not final):
        return
    received = f"more than {expected}" if written > expected else str(written)
    raise StorageError(f"gs://{location}/{key}: got {received} bytes, expected {expected}; "
                       "nothing was written")


def _collision(location: str, key: str) -> OutputCollision:
    return OutputCollision(f"gs://{location}/{key} was taken by another object while the output "
                           "was written; it was left as it is")


#: where in the adapter the SDK raised: a storage request, signing a URL with the service
#: account, building the client (loading a JSON key is gcs_identity's)
_Step = Literal["request", "sign", "client"]


@dataclass(frozen=True)
class _Call:
    """What the adapter asked of the SDKs, as the table below reads it."""

    #: the head of our message: "cannot read gs://bucket/key"
    doing: str
    step: _Step = "request"
    #: our message when the object is not found (NotFound), None: a failure like any other
    absent: str | None = None
    #: not-found is the answer (delete: nothing left to do), not a failure
    absent_is_answer: bool = False
    #: our message when the generation the write named no longer holds (PreconditionFailed)
    stale: str | None = None


def _failed(call: _Call, exc: BaseException) -> StorageError:
    return StorageError(f"{call.doing}: {_describe(exc)}")


def _refused_key(call: _Call, exc: BaseException) -> ConvbridgeError:
    """The type only: google-auth's parser messages may quote the key."""
    return GrantError(f"{call.doing}: {type(exc).__name__}")


#: the Google SDKs' exceptions (and httpx's, which uploads the pieces) as ours, first match first
_GOOGLE_ERRORS: tuple[VendorError[_Call], ...] = (
    VendorError(lambda: _api_errors.NotFound, None, when=lambda call, _: call.absent_is_answer),
    VendorError(lambda: _api_errors.NotFound, lambda call, _: StorageError(call.absent or ""),
                when=lambda call, _: call.absent is not None),
    VendorError(lambda: _api_errors.PreconditionFailed,
                lambda call, _: StaleWrite(call.stale or ""),
                when=lambda call, _: call.stale is not None),
    VendorError(lambda: (_api_errors.GoogleAPIError, _auth_errors.GoogleAuthError,
                         httpx.HTTPError),
                _failed, when=lambda call, _: call.step == "request"),
    VendorError(lambda: (ValueError, TypeError, AttributeError, _auth_errors.GoogleAuthError),
                _refused_key, when=lambda call, _: call.step == "sign"),
    VendorError(lambda: (ValueError, _auth_errors.GoogleAuthError),
                lambda call, exc: ConfigError(f"{call.doing}: {exc}"),
                when=lambda call, _: call.step == "client"),
)


def _google_errors(call: _Call) -> contextlib.AbstractContextManager[None]:
    return vendor_errors(_GOOGLE_ERRORS, call)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _api_errors.GoogleAPICallError):
        return f"HTTP {exc.code}: {exc.message}"
    return type(exc).__name__
