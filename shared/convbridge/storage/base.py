"""The storage adapter contract: four abstract operations, everything else built on them here.

An adapter knows how to mint the narrowest credential its storage allows and how to move bytes;
it does not know about rules, providers or records. Records and the loop-guard marker are
written through :meth:`Storage.write_json`, so every storage writes them the same way.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from convbridge.model import Grant, ObjectRef, OutputTarget

#: Metadata key the bridge sets on everything it writes. The trigger's loop guard drops any
#: object carrying it, so writing into a watched prefix never starts a job.
OUTPUT_MARKER = "convbridge-output"


class Storage(ABC):
    """One storage service. Subclasses implement the four abstract methods and ``stat``."""

    name: ClassVar[str]

    @abstractmethod
    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *, kind: str = "presigned_url") -> Grant:
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
    ) -> int:
        """Write ``chunks`` to ``key`` with bounded memory; return the bytes written. The object
        becomes visible under ``key`` only once complete."""

    @abstractmethod
    def stat(self, location: str, key: str) -> ObjectRef | None:
        """The object's size and version, or None if it does not exist."""

    def write_json(
        self, location: str, key: str, document: Mapping[str, Any], *, marker: str
    ) -> int:
        body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()
        return self.write_stream(
            location,
            key,
            [body],
            content_type="application/json",
            metadata={OUTPUT_MARKER: marker},
        )

    def read_bytes(self, location: str, key: str) -> bytes:
        return b"".join(self.read_stream(location, key))
