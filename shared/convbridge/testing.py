"""In-memory parts for unit tests of the pipeline: a Storage, a scripted Provider, claims and
secrets, and a Bridge built from them. Nothing here opens a socket; the relay downloads from
the scripted provider through an httpx mock transport.

The storage answers to the name ``s3`` and the provider to ``cloudconvert`` because rules
are validated against the registered names; neither behaves like those services beyond the
Storage and Provider contracts.
"""

from __future__ import annotations

import hmac
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any, ClassVar

import httpx

from convbridge.bridge import Bridge
from convbridge.claims import (
    SUBMIT_SCOPE,
    Claim,
    ClaimInProgress,
    Held,
    Result,
    SubmitClaim,
    claim_id,
    now_ms,
    restored_result,
    stored_result,
)
from convbridge.errors import (
    GrantError,
    ProviderError,
    StaleWrite,
    StorageError,
)
from convbridge.model import (
    SOURCE_TAG,
    CallbackRequest,
    Grant,
    GrantKind,
    JobOutcome,
    JobSpec,
    ObjectRef,
    OutputFile,
    OutputTarget,
)
from convbridge.providers.base import Provider, parse_json_object
from convbridge.rules import parse_rules
from convbridge.secrets import SecretStore
from convbridge.settings import Settings
from convbridge.storage.base import Storage

CONTEXT_SECRET = "convbridge/context"
PROVIDER_SECRET = "convbridge/cloudconvert"
SIGNATURE_HEADER = "Test-Signature"
PROVIDER_URL = "https://provider.test"


@dataclass
class StoredObject:
    data: bytes
    metadata: dict[str, str]
    revision: str


class MemoryStorage(Storage):
    """Objects in a dict, with the contract's conditional writes: ``if_revision`` and the
    create-only output writes (``output_precondition``)."""

    name = "s3"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self._revisions = itertools.count(1)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, clients: Any) -> Storage:
        return cls()

    def put(self, location: str, key: str, data: bytes,
            metadata: Mapping[str, str] | None = None) -> ObjectRef:
        """An upload by a user: stored as it is, whatever is there."""
        with self._lock:
            self.objects[(location, key)] = StoredObject(data, dict(metadata or {}),
                                                         str(next(self._revisions)))
        found = self.stat(location, key)
        assert found is not None
        return found

    def json(self, location: str, key: str) -> Any:
        """A stored record, parsed."""
        return json.loads(self.objects[(location, key)].data)

    def keys(self, location: str) -> set[str]:
        return {key for (where, key) in self.objects if where == location}

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        return Grant(kind="presigned_url", storage=self.name, location=ref.location,
                     scope=f"read {ref.key}", key=ref.key, url=f"memory://{ref.location}/{ref.key}",
                     expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds))

    def grant_write(self, target: OutputTarget, ttl_seconds: int) -> Grant:
        raise GrantError("the memory storage mints no write grants; outputs are relayed")

    def read_stream(self, location: str, key: str) -> Iterator[bytes]:
        found = self.objects.get((location, key))
        if found is None:
            raise StorageError(f"{location}/{key} does not exist")
        yield found.data

    def write_stream(self, location: str, key: str, chunks: Iterable[bytes], *,
                     content_type: str = "application/octet-stream",
                     metadata: Mapping[str, str] | None = None,
                     expected_size: int | None = None) -> int:
        revision = (self.output_precondition(location, key, metadata)
                    if SOURCE_TAG in (metadata or {}) else None)
        data = b"".join(chunks)  # an exception here leaves nothing behind
        if expected_size is not None and len(data) != expected_size:
            raise StorageError(f"{location}/{key}: {len(data)} bytes arrived, not "
                               f"{expected_size}; nothing was written")
        self._put(location, key, data, metadata, if_revision=revision,
                  create_only=revision is None and SOURCE_TAG in (metadata or {}))
        return len(data)

    def stat(self, location: str, key: str) -> ObjectRef | None:
        found = self.objects.get((location, key))
        if found is None:
            return None
        return ObjectRef(storage=self.name, location=location, key=key, version=found.revision,
                         size=len(found.data), metadata=dict(found.metadata))

    def delete(self, location: str, key: str) -> None:
        with self._lock:
            self.objects.pop((location, key), None)

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        return iter(sorted(key for key in self.keys(location) if key.startswith(prefix)))

    def put_bytes(self, location: str, key: str, data: bytes, *, content_type: str,
                  metadata: Mapping[str, str], if_revision: str | None = None,
                  if_absent: bool = False) -> str:
        if if_revision is None and if_absent:
            return self._put(location, key, data, metadata, if_revision=None, create_only=True)
        if if_revision is None and SOURCE_TAG in metadata:
            if_revision = self.output_precondition(location, key, metadata)
            return self._put(location, key, data, metadata, if_revision=if_revision,
                             create_only=if_revision is None)
        return self._put(location, key, data, metadata, if_revision=if_revision)

    def _put(self, location: str, key: str, data: bytes, metadata: Mapping[str, str] | None,
             *, if_revision: str | None, create_only: bool = False) -> str:
        with self._lock:
            current = self.objects.get((location, key))
            if if_revision is not None and (current is None or current.revision != if_revision):
                raise StaleWrite(f"{location}/{key} is no longer at revision {if_revision}")
            if create_only and current is not None:
                raise StaleWrite(f"{location}/{key} appeared before it could be created")
            revision = str(next(self._revisions))
            self.objects[(location, key)] = StoredObject(data, dict(metadata or {}), revision)
            return revision


class MemoryClaims:
    """The claims' contract without DynamoDB: an action runs once per (scope, key); while it
    runs the claim is in progress; an action that raises leaves no claim. Submit claims are
    held as :class:`SubmitClaim` items with a deadline ``in_progress_ms`` after the claim
    (what the Lambda's remaining time gives in DynamoDB); :meth:`end_invocations` lets every
    deadline pass at once, as if the invocations that hold them had died."""

    def __init__(self, *, in_progress_ms: int = 60_000) -> None:
        self.stored: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.submissions: dict[str, SubmitClaim] = {}
        self.in_progress_ms = in_progress_ms
        self._lock = threading.Lock()

    def register_lambda_context(self, context: Any) -> None:
        """Claims here never expire."""

    def forget(self) -> None:
        """Every stored claim expired at once."""
        with self._lock:
            self.stored.clear()
            self.submissions.clear()

    def end_invocations(self) -> None:
        """Every submit claim's invocation is over (its deadline passed)."""
        with self._lock:
            self.submissions = {key: replace(claim, deadline_ms=now_ms() - 1)
                                for key, claim in self.submissions.items()}

    def claim_submission(self, key: Mapping[str, Any], claim: SubmitClaim, *,
                         replacing: SubmitClaim | None = None) -> Held:
        item_id = claim_id(SUBMIT_SCOPE, key)
        with self._lock:
            holder = self.submissions.get(item_id)
            if holder is not None and holder != replacing:
                return Held(holder, ours=False)
            stored = replace(claim, deadline_ms=now_ms() + self.in_progress_ms, completed=None)
            self.submissions[item_id] = stored
            return Held(stored, ours=True)

    def release_submission(self, key: Mapping[str, Any], nonce: str) -> None:
        item_id = claim_id(SUBMIT_SCOPE, key)
        with self._lock:
            holder = self.submissions.get(item_id)
            if holder is not None and holder.nonce == nonce:
                del self.submissions[item_id]

    def once(self, scope: str, key: Mapping[str, Any], action: Callable[[], Result],
             result_type: type[Result]) -> Claim[Result]:
        claim_key = (scope, json.dumps(dict(key), sort_keys=True))
        with self._lock:
            if claim_key in self.stored:
                stored = self.stored[claim_key]
                if stored is None:
                    raise ClaimInProgress(f"{scope} claim is held by another invocation")
                return Claim(restored_result(stored, result_type), replayed=True)
            self.stored[claim_key] = None
        try:
            result = action()
        except BaseException:
            with self._lock:
                del self.stored[claim_key]
            raise
        with self._lock:
            self.stored[claim_key] = stored_result(result)
        return Claim(result, replayed=False)


class _SecretsClient:
    def __init__(self, values: Mapping[str, Mapping[str, str]]) -> None:
        self._values = values

    def get_secret_value(self, SecretId: str) -> dict[str, str]:  # noqa: N803 (boto3's name)
        return {"SecretString": json.dumps(dict(self._values[SecretId]))}


@dataclass
class ScriptedJob:
    """A job the scripted provider was asked to create, and what it will answer for it."""

    job_id: str
    spec: JobSpec
    outputs: dict[str, bytes] = field(default_factory=dict)


class ScriptedProvider(Provider):
    """A provider whose creates answer from ``script`` (a job id is made up when it runs
    out; an exception in it is raised), whose callbacks are signed with an HMAC in
    SIGNATURE_HEADER, and whose output downloads are served by :meth:`transport`."""

    name = "cloudconvert"
    download_hosts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, signing_secret: str = "provider-signing-secret",
                 script: Iterable[str | Exception] = (),
                 on_create: Callable[[JobSpec], None] | None = None) -> None:
        super().__init__(api_key="provider-api-key", signing_secret=signing_secret,
                         base_url=PROVIDER_URL, http=httpx.Client())
        self.script = list(script)
        self.on_create = on_create
        self.jobs: dict[str, ScriptedJob] = {}
        self._ids = itertools.count(1)

    def build_job(self, spec: JobSpec) -> dict[str, Any]:
        return {"spec": spec}

    def create_job(self, document: Mapping[str, Any]) -> str:
        spec: JobSpec = document["spec"]
        answer = self.script.pop(0) if self.script else f"job-{next(self._ids)}"
        if isinstance(answer, Exception):
            raise answer
        if self.on_create is not None:
            self.on_create(spec)
        self.jobs[answer] = ScriptedJob(answer, spec)
        return answer

    def verify_callback(self, request: CallbackRequest) -> None:
        self._verify_hmac_hex(request, SIGNATURE_HEADER)

    def parse_callback(self, body: bytes) -> JobOutcome | None:
        document = parse_json_object(body, "a scripted callback")
        if document.get("event") == "job.progress":
            return None
        outputs = tuple(OutputFile(filename=o["filename"], size=o.get("size"), url=o["url"])
                        for o in document.get("outputs", []))
        return JobOutcome(provider=self.name, job_id=str(document["job_id"]),
                          status=document["status"], context_token=document.get("tag"),
                          event=str(document.get("event", "")), outputs=outputs,
                          failed_task=document.get("failed_task"), code=document.get("code"),
                          message=document.get("message"))

    def callback(self, job_id: str, status: str = "finished", *,
                 outputs: Mapping[str, bytes] | None = None, code: str | None = None,
                 message: str | None = None, announced: Mapping[str, int] | None = None,
                 ) -> CallbackRequest:
        """The provider's signed callback for ``job_id``; its
        ``outputs`` (filename -> bytes) are served at download URLs on the provider's host,
        announced at their sizes unless ``announced`` says otherwise."""
        job = self.jobs[job_id]
        job.outputs.update(outputs or {})
        listed = [{"filename": name, "url": f"{PROVIDER_URL}/files/{job_id}/{name}",
                   "size": (announced or {}).get(name, len(data))}
                  for name, data in (outputs or {}).items()]
        document: dict[str, Any] = {"job_id": job_id, "status": status,
                                    "tag": job.spec.context_token, "event": f"job.{status}",
                                    "outputs": listed}
        if status == "failed":
            document.update(failed_task="convert", code=code, message=message)
        return self.signed(json.dumps(document).encode())

    def signed(self, body: bytes) -> CallbackRequest:
        """A callback of ``body`` the provider signed."""
        signature = hmac.new((self._signing_secret or "").encode(), body, sha256).hexdigest()
        return CallbackRequest(body, {SIGNATURE_HEADER: signature})

    def transport(self) -> httpx.MockTransport:
        """The provider's download host: a job's outputs, or 404."""

        def serve(request: httpx.Request) -> httpx.Response:
            _, _, job_id, name = request.url.path.split("/", 3)
            job = self.jobs.get(job_id)
            if job is None or name not in job.outputs:
                return httpx.Response(404)
            return httpx.Response(200, content=job.outputs[name])

        return httpx.MockTransport(serve)

    def fetch_job(self, job_id: str) -> JobOutcome | None:
        raise ProviderError("the scripted provider answers no lookups")


def memory_bridge(rules_yaml: str, *, storage: MemoryStorage | None = None,
                  provider: ScriptedProvider | None = None,
                  claims: MemoryClaims | None = None) -> Bridge:
    """A Bridge over in-memory parts: the rules given, a memory ``s3`` storage, the scripted
    ``cloudconvert`` provider and memory claims (each made fresh unless passed in, so two
    bridges can share them, as two invocations share the cloud)."""
    provider = provider or ScriptedProvider()
    settings = Settings(
        rules_location="<memory>", context_secret_name=CONTEXT_SECRET,
        idempotency_table="<memory>", webhook_url="https://bridge.test",
        provider_secret_names={"cloudconvert": PROVIDER_SECRET},
        provider_base_urls={"cloudconvert": PROVIDER_URL},
    )
    secrets = SecretStore(_SecretsClient({
        CONTEXT_SECRET: {"key": "k" * 32},
        PROVIDER_SECRET: {"api_key": "provider-api-key", "signing_secret": "unused"},
    }))
    return Bridge(settings, parse_rules(rules_yaml), secrets,
                  http=httpx.Client(transport=provider.transport()),
                  storages={"s3": storage or MemoryStorage()},
                  providers={"cloudconvert": provider}, claims=claims or MemoryClaims())
