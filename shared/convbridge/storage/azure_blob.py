"""Azure Blob Storage: service SAS grants scoped to one blob, and streaming I/O.

Read grants are a service SAS with ``sr=b``, ``sp=r``, HTTPS only, on the one blob; providers use
it natively (``sas_token``) or as a plain signed URL. Write grants are a service SAS with
``sp=c`` (create only) on the one output blob: the provider can write that blob once and can
neither read it back, overwrite it, nor touch any other blob. When the output blob already
exists a create-only SAS could not replace it, so no write grant is minted and the pipeline
relays the output instead. Grants are user-delegation SAS signed with a short-lived delegation
key got with an Entra ID token (:mod:`convbridge.storage.azure_identity`: by federation, or by
a client certificate where the account's secret opts in); an account whose secret says
``"signing": "account_key"`` is signed with its account key instead, which then comes from
Secrets Manager (never the environment) and never leaves the bridge.

Settings (``CONVBRIDGE_`` + name): ``AZURE_ACCOUNT_SECRET`` names the secret holding
``{"account_name", "tenant_id", "client_id"}``; for an account that cannot federate, those and
``"signing": "client_certificate"``, ``client_certificate``, ``client_certificate_key`` (PEM);
or ``{"account_name", "signing": "account_key", "account_key"}``. ``AZURE_AUTHORITY_URL``
overrides Entra's ``https://login.microsoftonline.com``; ``AZURE_BLOB_ENDPOINT`` overrides
``https://<account>.blob.core.windows.net`` (e.g. Azurite's ``http://127.0.0.1:10000/<account>``);
``AZURE_ALLOW_HTTP=1`` lets grants work over plain HTTP, for a local emulator only.
Azure metadata names must be C# identifiers, so ``-`` in names (the bridge's output marker)
is stored as ``_`` and read back as ``-``.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from convbridge.errors import (
    ConfigError,
    GrantError,
    OutputCollision,
    StaleWrite,
    StorageError,
    VendorError,
    vendor_errors,
)
from convbridge.model import OUTPUT_MARKER, SOURCE_TAG, Grant, GrantKind, ObjectRef, OutputTarget
from convbridge.storage._vendor import VendorModule
from convbridge.storage.azure_identity import (
    ENTRA_AUTHORITY,
    AccountKeySigning,
    AzureCredentialSource,
    credential_source,
)
from convbridge.storage.base import Storage

if TYPE_CHECKING:
    import azure.core as _azure
    import azure.core.exceptions as _azure_vendor
    import azure.storage.blob as _blob_sdk
    from azure.storage.blob import BlobSasPermissions

    from convbridge.clients import CloudClients
    from convbridge.settings import Settings
else:
    _azure = VendorModule("azure.core")
    _azure_vendor = VendorModule("azure.core.exceptions")
    _blob_sdk = VendorModule("azure.storage.blob")

#: Staged block size: the most the relay holds in memory per upload.
BLOCK_SIZE = 8 * 1024 * 1024
#: Downloads arrive in chunks of this size (the SDK's first GET would otherwise take 32 MiB).
READ_CHUNK = 4 * 1024 * 1024
#: How long a server-side copy within the account may stay pending before it counts as failed.
COPY_WAIT_SECONDS = 60.0


def azure_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata as Azure accepts it: names are C# identifiers, so ``-`` becomes ``_``."""
    return {name.replace("-", "_"): value for name, value in metadata.items()}


def bridge_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata as the rest of the bridge reads it: its own names (the output marker, the
    source tag) as the bridge spells them."""
    own = {name.replace("-", "_"): name for name in (OUTPUT_MARKER, SOURCE_TAG)}
    return {own.get(name, name): value for name, value in metadata.items()}


def output_condition(replacing: str | None) -> dict[str, Any]:
    """Create-only (``If-None-Match: *``), or replace exactly the revision of the same source's
    earlier output."""
    if replacing is None:  # the SDK sends If-None-Match: * itself and takes no etag with it
        return {"match_condition": _azure.MatchConditions.IfMissing}
    return {"etag": _quoted(replacing), "match_condition": _azure.MatchConditions.IfNotModified}


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


class AzureBlobStorage(Storage):
    name: ClassVar[str] = "azure_blob"
    write_grant_kinds: ClassVar[tuple[GrantKind, ...]] = ("sas",)
    read_grant_kinds: ClassVar[frozenset[GrantKind]] = frozenset({"presigned_url", "sas"})
    event_formats: ClassVar[tuple[str, ...]] = (
        "Event Grid BlobCreated (Event Grid schema or CloudEvents)",)
    grant_signing: ClassVar[str | None] = (
        "a user delegation key got with an Entra ID token by workload identity federation (no "
        "secret held); for an account whose secret says \"signing\": \"client_certificate\" "
        "(opt-in), the same with an Entra ID token got by the app's client certificate; the "
        "account key only for an account whose secret says \"signing\": \"account_key\" "
        "(opt-in)")

    @classmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> AzureBlobStorage:
        secret_name = settings.required("AZURE_ACCOUNT_SECRET",
                                        "to reach Azure Blob storage and sign SAS grants")
        secrets = clients.secrets
        account = secrets.get(secret_name).field("account_name")
        allow_http = settings.value("AZURE_ALLOW_HTTP", "0") == "1"
        # read through the secret cache on each use, so a rotated key is picked up
        signing = credential_source(
            lambda: secrets.get(secret_name), sts_client=lambda: clients.client("sts"),
            authority=settings.value("AZURE_AUTHORITY_URL", ENTRA_AUTHORITY) or ENTRA_AUTHORITY)
        return cls(account_name=account, signing=signing,
                   endpoint=settings.value("AZURE_BLOB_ENDPOINT"), allow_http=allow_http)

    def __init__(
        self,
        *,
        account_name: str,
        signing: AzureCredentialSource | None = None,
        account_key: Callable[[], str] | None = None,
        endpoint: str | None = None,
        allow_http: bool = False,
        connection_verify: str | bool = True,
    ) -> None:
        """``signing`` says which identity signs grants and authorises the bridge's I/O;
        ``account_key`` alone is short for :class:`AccountKeySigning` with it.
        ``connection_verify`` is the CA bundle to trust (a local emulator's own cert)."""
        if signing is None and account_key is not None:
            signing = AccountKeySigning(account_key=account_key)
        elif signing is None or account_key is not None:
            raise ConfigError("an Azure storage takes one signing identity: signing or "
                              "account_key")
        self.signing: AzureCredentialSource = signing
        self.account_name = account_name
        self.endpoint = (endpoint or f"https://{account_name}.blob.core.windows.net").rstrip("/")
        if urlsplit(self.endpoint).scheme not in {"http", "https"}:
            raise ConfigError(f"the Azure blob endpoint {self.endpoint!r} is not an http(s) URL")
        if self.endpoint.startswith("http://") and not allow_http:
            raise ConfigError(
                f"the Azure blob endpoint {self.endpoint} is plain HTTP; grants are HTTPS-only "
                "unless CONVBRIDGE_AZURE_ALLOW_HTTP=1 (local emulators only)")
        self.allow_http = allow_http
        self._client_options: dict[str, Any] = {
            "connection_verify": connection_verify,
            # The SDK's default backoff starts at 15 s: longer than a delivery can wait.
            "retry_policy": _blob_sdk.ExponentialRetry(initial_backoff=1, increment_base=2,
                                                   retry_total=2, random_jitter_range=1),
            "connection_timeout": 10,
            "read_timeout": 60,
            "max_single_get_size": READ_CHUNK,
            "max_chunk_get_size": READ_CHUNK,
        }
        self._service: tuple[Any, _blob_sdk.BlobServiceClient] | None = None

    def __repr__(self) -> str:
        return f"AzureBlobStorage(account={self.account_name!r}, endpoint={self.endpoint!r})"

    # -- clients -------------------------------------------------------------------------------

    def _client(self) -> _blob_sdk.BlobServiceClient:
        credential = self.signing.service_credential(self.account_name)
        if self._service is None or self._service[0] != credential:
            self._service = (credential, _blob_sdk.BlobServiceClient(
                self.endpoint, credential=credential, **self._client_options))
        return self._service[1]

    def _container(self, location: str) -> str:
        account, slash, container = location.partition("/")
        if not slash or not container or "/" in container:
            raise StorageError(f"azure_blob location {location!r} is not <account>/<container>")
        if account != self.account_name:
            raise StorageError(f"azure_blob location {location!r} is outside account "
                               f"{self.account_name}, the only one this deployment holds a key "
                               "for")
        return container

    def _blob(self, location: str, key: str) -> _blob_sdk.BlobClient:
        return self._client().get_blob_client(self._container(location), key)

    def blob_url(self, location: str, key: str) -> str:
        """The blob's URL, percent-encoded as RFC 3987 requires (no credentials in it)."""
        container = self._container(location)
        return _blob_sdk.BlobClient(self.endpoint, container, key).url

    # -- grants --------------------------------------------------------------------------------

    def _sas(self, location: str, key: str, permission: BlobSasPermissions,
             ttl_seconds: int) -> tuple[str, datetime]:
        expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        container = self._container(location)
        with _azure_errors(_Call("sign a SAS for", f"{location}/{key}", signing=True)):
            token = _blob_sdk.generate_blob_sas(
                self.account_name, container, key,
                **self.signing.sas_signing(self._client(), expires),
                permission=permission, expiry=expires,
                protocol="https,http" if self.allow_http else "https",
            )
        return token, expires

    def _grant(self, location: str, key: str, token: str, expires: datetime, scope: str,
               kind: GrantKind) -> Grant:
        return Grant(
            kind=kind,
            storage=self.name, location=location, key=key, scope=scope, expires_at=expires,
            endpoint=self.endpoint, url=f"{self.blob_url(location, key)}?{token}",
            secret={"sas_token": token, "account_name": self.account_name},
        )

    def _protocols(self) -> str:
        protocols = "HTTPS or HTTP (dev only)" if self.allow_http else "HTTPS only"
        return f"{protocols}; signed with {self.signing.describes}"

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        """A service SAS reading the one blob. ``sas`` hands it to providers that take a SAS
        token; ``presigned_url`` is the same SAS as a URL any provider can download."""
        if kind not in {"sas", "presigned_url"}:
            raise GrantError(f"azure_blob cannot mint a read grant of kind {kind!r}")
        token, expires = self._sas(ref.location, ref.key, _blob_sdk.BlobSasPermissions(read=True),
                                   ttl_seconds)
        scope = (f"read (sp=r, sr=b) of azure_blob://{ref.location}/{ref.key}, "
                 f"{self._protocols()}")
        return self._grant(ref.location, ref.key, token, expires, scope,
                           "sas" if kind == "sas" else "presigned_url")

    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        if self.stat(target.location, target.key) is not None:
            raise GrantError(f"{target.location}/{target.key} exists and a create-only SAS "
                             "cannot replace it")
        token, expires = self._sas(target.location, target.key,
                                   _blob_sdk.BlobSasPermissions(create=True), ttl_seconds)
        scope = (f"create once (sp=c, sr=b) of azure_blob://{target.location}/{target.key}: "
                 f"no read, overwrite, delete or list; {self._protocols()}")
        return self._grant(target.location, target.key, token, expires, scope, "sas")

    # -- I/O -----------------------------------------------------------------------------------

    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        with _azure_errors(_Call("read", self._where(location, key))):
            yield from self._blob(location, key).download_blob().chunks()

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
        """Blocks are staged as they fill and committed only once the stream ended with the
        expected byte count: staged blocks are invisible, so a short or failed stream leaves
        the blob as it was (Azure discards uncommitted blocks after a week)."""
        buffer = bytearray()
        iterator = iter(chunks)
        for chunk in iterator:
            buffer += chunk
            if len(buffer) >= BLOCK_SIZE:
                break
        else:
            _check_size(self._where(location, key), len(buffer), expected_size)
            self.put_bytes(location, key, bytes(buffer), content_type=content_type,
                           metadata=metadata or {})
            return len(buffer)
        output = SOURCE_TAG in (metadata or {})
        condition = (output_condition(self.output_precondition(location, key, metadata))
                     if output else {})
        blob = self._blob(location, key)
        prefix = uuid.uuid4().hex
        blocks: list[_blob_sdk.BlobBlock] = []
        total = 0

        def stage(data: bytes) -> None:
            # every block id of a blob must have the same length; the prefix keeps two
            # concurrent writers of one key from committing each other's blocks
            block_id = base64.b64encode(f"{prefix}{len(blocks):08d}".encode()).decode()
            blob.stage_block(block_id, data, length=len(data))
            blocks.append(_blob_sdk.BlobBlock(block_id=block_id))

        where = self._where(location, key)
        # Put Blob onto the name meanwhile also discards the blocks staged for it, so the
        # commit can fail as a missing block list rather than a failed condition: the blob
        # now there tells whether the name was taken
        call = _Call("write", where, output=output,
                     taken=lambda: self._taken(location, key, metadata or {}))
        with _azure_errors(call):
            while True:
                while len(buffer) >= BLOCK_SIZE:
                    stage(bytes(buffer[:BLOCK_SIZE]))
                    del buffer[:BLOCK_SIZE]
                    total += BLOCK_SIZE
                more = next(iterator, None)
                if more is None:
                    break
                buffer += more
            if buffer:
                stage(bytes(buffer))
                total += len(buffer)
            _check_size(where, total, expected_size)
            blob.commit_block_list(blocks, content_settings=_blob_sdk.ContentSettings(
                content_type=content_type), metadata=azure_metadata(metadata or {}),
                **condition)
        return total

    def _taken(self, location: str, key: str, metadata: Mapping[str, str]) -> bool:
        """Whether the name of a failed output write holds another source's blob now."""
        found = self.stat(location, key)
        return found is not None and found.metadata.get(SOURCE_TAG) != metadata.get(SOURCE_TAG)

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
        condition: dict[str, Any] = {}
        output = SOURCE_TAG in metadata and not if_revision and not if_absent
        if output:
            condition = output_condition(self.output_precondition(location, key, metadata))
        elif if_revision:
            condition = {"etag": _quoted(if_revision),
                         "match_condition": _azure.MatchConditions.IfNotModified}
        elif if_absent:
            condition = output_condition(None)
        call = _Call("write", self._where(location, key), output=output,
                     revision=if_revision or None, if_absent=if_absent and not if_revision)
        with _azure_errors(call):
            answer = self._blob(location, key).upload_blob(
                data, overwrite=True, length=len(data),
                content_settings=_blob_sdk.ContentSettings(content_type=content_type),
                metadata=azure_metadata(metadata), **condition)
        return str(answer.get("etag", ""))

    def stat(self, location: str, key: str) -> ObjectRef | None:
        props: _blob_sdk.BlobProperties | None = None
        with _azure_errors(_Call("stat", self._where(location, key), absent_is_answer=True)):
            props = self._blob(location, key).get_blob_properties()
        if props is None:
            return None
        if props.copy is not None and props.copy.status == "pending":
            # a copy announces the blob before its bytes are all there (hierarchical
            # namespace accounts); a provider must not read it half-copied
            raise StorageError(f"{self._where(location, key)} is still being copied")
        return ObjectRef(
            storage=self.name, location=location, key=key,
            version=str(props.etag or "").strip('"') or None, size=int(props.size or 0),
            metadata=bridge_metadata(props.metadata or {}),
        )

    def delete(self, location: str, key: str) -> None:
        with _azure_errors(_Call("delete", self._where(location, key), absent_is_answer=True)):
            self._blob(location, key).delete_blob(delete_snapshots="include")

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        container = self._container(location)
        with _azure_errors(_Call("list", self._where(location, prefix))):
            names = self._client().get_container_client(container).list_blob_names(
                name_starts_with=prefix or None)
            for name in names:
                yield str(name)

    def copy(self, location: str, source_key: str, target_key: str) -> int:
        """Server-side Copy Blob within the account (the source authorised by the same shared
        key), waited for: the caller may delete the source next."""
        found = self.stat(location, source_key)
        if found is None:
            raise StorageError(f"cannot copy {self._where(location, source_key)}: "
                               "it does not exist")
        target = self._blob(location, target_key)
        deadline = time.monotonic() + COPY_WAIT_SECONDS
        with _azure_errors(_Call("copy", self._where(location, source_key))):
            status = target.start_copy_from_url(self.blob_url(location, source_key)).get(
                "copy_status")
            while status == "pending" and time.monotonic() < deadline:
                time.sleep(0.5)
                copy = target.get_blob_properties().copy
                status = copy.status if copy is not None else None
        if status != "success":
            raise StorageError(f"copy of {self._where(location, source_key)} to {target_key} "
                               f"ended {status}")
        return found.size or 0

    def _where(self, location: str, key: str) -> str:
        return f"azure_blob://{location}/{key}"


def _collision(where: str) -> OutputCollision:
    return OutputCollision(f"{where} was taken by another blob while the output was written; "
                           "it was left as it is")


def _check_size(where: str, written: int, expected: int | None) -> None:
    if expected is not None and written != expected:
        raise StorageError(f"{where}: got {written} bytes, expected {expected}; nothing was "
                           "written")


@dataclass(frozen=True)
class _Call:
    """What the adapter asked of the SDK, as the table below reads it."""

    #: the verb of the message: "cannot <action> <where>: ..."
    action: str
    where: str
    #: an output write: create-only, or replacing the same source's earlier output
    output: bool = False
    #: the revision (ETag) a conditional write expected
    revision: str | None = None
    #: a create-only write that is not an output's (``put_bytes(if_absent=True)``)
    if_absent: bool = False
    #: for a staged output write: whether another source's blob holds the name now
    taken: Callable[[], bool] | None = None
    #: not-found is an answer here (stat: None; delete: already done), not a failure
    absent_is_answer: bool = False
    #: a SAS signed locally (account key or delegation key): the SDK's ValueError or TypeError
    #: means the key is unusable
    signing: bool = False


def _failed(call: _Call, exc: BaseException) -> StorageError:
    return StorageError(f"cannot {call.action} {call.where}: {_describe(exc)}")


#: azure-core's exceptions as ours, first match first
_AZURE_ERRORS: tuple[VendorError[_Call], ...] = (
    VendorError(lambda: _azure_vendor.ResourceNotFoundError, None,
                when=lambda call, _: call.absent_is_answer),
    # If-None-Match: * (409 BlobAlreadyExists) or If-Match (412) refused an output write
    VendorError(lambda: (_azure_vendor.ResourceExistsError, _azure_vendor.ResourceModifiedError),
                lambda call, _: _collision(call.where), when=lambda call, _: call.output),
    VendorError(lambda: _azure_vendor.AzureError, lambda call, _: _collision(call.where),
                when=lambda call, _: call.output and call.taken is not None and call.taken()),
    # If-None-Match: * refused a create-only write (409 BlobAlreadyExists, or 412)
    VendorError(lambda: (_azure_vendor.ResourceExistsError, _azure_vendor.ResourceModifiedError),
                lambda call, _: StaleWrite(f"{call.where} already exists"),
                when=lambda call, _: call.if_absent),
    VendorError(lambda: _azure_vendor.ResourceModifiedError,
                lambda call, _: StaleWrite(f"{call.where} changed since {call.revision}"),
                when=lambda call, _: call.revision is not None),
    # the record was removed since: also not the revision expected
    VendorError(lambda: _azure_vendor.ResourceNotFoundError,
                lambda call, _: StaleWrite(f"{call.where} is gone"),
                when=lambda call, _: call.revision is not None),
    VendorError(lambda: _azure_vendor.AzureError, _failed),
    # named by type only: the message may quote the key
    VendorError(lambda: (ValueError, TypeError),
                lambda call, exc: GrantError(f"cannot {call.action} {call.where}: "
                                             f"{type(exc).__name__}"),
                when=lambda call, _: call.signing),
)


def _azure_errors(call: _Call) -> contextlib.AbstractContextManager[None]:
    return vendor_errors(_AZURE_ERRORS, call)


def _describe(exc: BaseException) -> str:
    """The error code and status only: SDK messages can quote request URLs and headers."""
    if isinstance(exc, _azure_vendor.HttpResponseError):
        # the storage SDK sets error_code on the exceptions it raises; azure-core does not
        code = getattr(exc, "error_code", None) or getattr(exc.response, "reason", None) or "Error"
        return f"{code} (HTTP {exc.status_code})"
    return type(exc).__name__
