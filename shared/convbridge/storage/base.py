"""The storage adapter contract: four abstract operations, everything else built on them here.

An adapter knows how to mint the narrowest credential its storage allows and how to move bytes;
it does not know about rules, providers or records. Records and the loop-guard marker are
written through :meth:`Storage.write_json`, so every storage writes them the same way.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from convbridge.errors import OutputCollision, StorageError
from convbridge.model import OUTPUT_MARKER, SOURCE_TAG, Grant, GrantKind, ObjectRef, OutputTarget

if TYPE_CHECKING:
    from convbridge.clients import CloudClients
    from convbridge.settings import Settings

class Storage(ABC):
    """One storage service. Subclasses implement the four abstract methods and ``stat``."""

    name: ClassVar[str]
    #: longest key the storage accepts, in UTF-8 bytes (S3 and GCS: 1024)
    max_key_bytes: ClassVar[int] = 1024
    #: write grant kinds this storage can mint, narrowest first; empty: outputs are relayed
    write_grant_kinds: ClassVar[tuple[GrantKind, ...]] = ()
    #: the read grant the relay route uses; "upload" for storages that cannot sign a URL, whose
    #: bytes the bridge pushes to the provider itself
    relay_read_kind: ClassVar[GrantKind] = "presigned_url"
    #: read grant kinds :meth:`grant_read` can mint
    read_grant_kinds: ClassVar[frozenset[GrantKind]] = frozenset({"presigned_url"})
    #: files are found by a scheduled sweep, which claims each by moving it under
    #: ``processing/`` (see convbridge.triggers.sftp_sweep), rather than announced by events
    swept: ClassVar[bool] = False
    #: the trigger payloads that announce a new object, for ``convbridge routes``
    event_formats: ClassVar[tuple[str, ...]] = ()
    #: which identity signs the grants, for ``convbridge routes`` (None: nothing to say)
    grant_signing: ClassVar[str | None] = None

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings, clients: CloudClients) -> Storage:
        """Build the adapter for a deployment: endpoints from settings, credentials from
        Secrets Manager through ``clients``, never from the environment."""

    @abstractmethod
    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        """A credential that can read ``ref`` and nothing else, for ``ttl_seconds``."""

    @abstractmethod
    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        """A credential that can create the job's outputs at ``target`` and nothing else."""

    @abstractmethod
    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        """Yield the object's bytes in bounded chunks."""

    @abstractmethod
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
        """Write ``chunks`` to ``key`` with bounded memory; return the bytes written. The object
        becomes visible under ``key`` only once complete, and only if exactly
        ``expected_size`` bytes arrived (when given): a short or failed stream leaves nothing
        behind and raises StorageError. With SOURCE_TAG in ``metadata`` the write is an
        output's: see :meth:`output_precondition`."""

    @abstractmethod
    def stat(self, location: str, key: str) -> ObjectRef | None:
        """The object's size, version and metadata, or None if it does not exist."""

    @abstractmethod
    def delete(self, location: str, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    @abstractmethod
    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, in storage order."""

    def copy(self, location: str, source_key: str, target_key: str) -> int:
        """Copy within one location; adapters with a server-side copy override this."""
        found = self.stat(location, source_key)
        if found is None:
            raise StorageError(f"cannot copy {location}/{source_key}: it does not exist")
        return self.write_stream(location, target_key, self.read_stream(location, source_key),
                                 metadata=found.metadata, expected_size=found.size)

    @abstractmethod
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
        """Write a small object whole and return its revision (ETag, generation). With
        ``if_revision``, write only if the object is still at that revision, else raise
        StaleWrite: how a late writer avoids clobbering a newer record. With ``if_absent``,
        write only if there is no object under ``key`` at all, else raise StaleWrite: how a
        record is created once. With SOURCE_TAG in ``metadata`` (and neither condition) the
        write is an output's: see :meth:`output_precondition`."""

    def output_precondition(self, location: str, key: str,
                            metadata: Mapping[str, str] | None) -> str | None:
        """For an output write (``metadata`` carries SOURCE_TAG): None when ``key`` is free, so
        the write must create it; the existing object's revision when it carries the same
        source tag, so the write may replace exactly that revision. Anything else at ``key`` is
        somebody else's: OutputCollision. Adapters make the write itself conditional on the
        answer, so an object appearing in between is not overwritten either."""
        tag = (metadata or {}).get(SOURCE_TAG)
        if tag is None:
            raise StorageError(f"{location}/{key}: an output write needs {SOURCE_TAG} metadata")
        found = self.stat(location, key)
        if found is None:
            return None
        if found.metadata.get(SOURCE_TAG) == tag and found.version:
            return found.version
        raise OutputCollision(f"{location}/{key} already exists and was not written by "
                              "convbridge for this source; it was left as it is")

    def write_json(
        self,
        location: str,
        key: str,
        document: Mapping[str, Any],
        *,
        marker: str,
        if_revision: str | None = None,
        if_absent: bool = False,
    ) -> str:
        body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()
        return self.put_bytes(location, key, body, content_type="application/json",
                              metadata={OUTPUT_MARKER: marker}, if_revision=if_revision,
                              if_absent=if_absent)

    def read_bytes(self, location: str, key: str) -> bytes:
        return b"".join(self.read_stream(location, key))

    def read_revision(self, location: str, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and the revision ``put_bytes(if_revision=...)`` matches, or
        None when there is none: what replacing a record only as it was read takes. Adapters
        whose ``stat`` version is not that revision override this."""
        found = self.stat(location, key)
        if found is None or not found.version:
            return None
        try:
            return self.read_bytes(location, key), found.version
        except StorageError:
            if self.stat(location, key) is None:
                return None  # deleted between the two calls
            raise

    def after_settle(self, location: str, key: str, status: str) -> None:  # noqa: B027
        """Called once a job for ``key`` has settled (``status`` finished or failed) and its
        records are written. Storages whose sweep claimed the source move it aside here; a
        failure is logged, not raised, since the records already say what happened."""
