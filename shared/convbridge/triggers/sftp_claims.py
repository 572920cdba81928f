"""The SFTP claims queue: how the sweep hands a claimed file to the trigger fleet, and the typed
view the consumer reads it back with.

The sweep claims a file by renaming it into ``processing/`` and then sends one message per
claim (``SendMessageBatch``, ten per call) naming the storage, the drop, the claimed key, its
version (``size:mtime``, what the submit claim is keyed on) and its size. The consumer, the
same function on an SQS event source, submits it and moves it on as the sweep once did
inline. Only the sweep writes this queue, but a body is still read as hostile: anything that
is not exactly this document is refused with a reason that names the field, never a crash.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from convbridge.model import CLAIM_PREFIX, ObjectRef
from convbridge.names import unsafe_key_reason

logger = logging.getLogger(__name__)

#: what ``kind`` says in every claims message; anything else is not one of ours
MESSAGE_KIND = "convbridge.sftp-claim"
MESSAGE_VERSION = 1
#: far above any real claim (a key is at most a few hundred bytes), far below SQS's 256 KiB
MAX_BODY_CHARS = 16_384
#: SendMessageBatch's most entries per call
BATCH_ENTRIES = 10
_FIELDS = frozenset({"kind", "v", "storage", "location", "key", "version", "size"})
_VERSION = re.compile(r"(0|[1-9][0-9]{0,18}):(0|[1-9][0-9]{0,18})")


class BadClaimMessage(ValueError):
    """A claims message that is not one the sweep writes; the message says which field."""


@dataclass(frozen=True)
class ClaimMessage:
    """One claimed file: ``key`` is under CLAIM_PREFIX, ``version`` is ``size:mtime`` as the
    sweep saw it settle."""

    storage: str
    location: str
    key: str
    version: str
    size: int

    @property
    def dropped_key(self) -> str:
        """Where the file was dropped, and where it goes back to."""
        return self.key[len(CLAIM_PREFIX):]

    def ref(self) -> ObjectRef:
        return ObjectRef(self.storage, self.location, self.key, version=self.version,
                         size=self.size)

    def body(self) -> str:
        # ASCII only: SQS refuses some code points in bodies, and keys may hold any
        return json.dumps({"kind": MESSAGE_KIND, "v": MESSAGE_VERSION, "storage": self.storage,
                           "location": self.location, "key": self.key,
                           "version": self.version, "size": self.size}, sort_keys=True)


def parse_claim(body: object) -> ClaimMessage:
    """The claim ``body`` holds, or BadClaimMessage saying what is wrong with it."""
    if not isinstance(body, str):
        raise BadClaimMessage(f"the body is not text but {type(body).__name__}")
    if len(body) > MAX_BODY_CHARS:
        raise BadClaimMessage(f"the body has {len(body)} characters, more than "
                              f"{MAX_BODY_CHARS}")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadClaimMessage(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadClaimMessage("the body is not a JSON object")
    if document.get("kind") != MESSAGE_KIND:
        raise BadClaimMessage(f"kind is not {MESSAGE_KIND!r}")
    if document.get("v") != MESSAGE_VERSION or isinstance(document.get("v"), bool):
        raise BadClaimMessage(f"v is not {MESSAGE_VERSION}")
    unknown = sorted(str(name)[:40] for name in set(document) - _FIELDS)
    if unknown:
        raise BadClaimMessage(f"unknown fields: {', '.join(unknown)}")
    storage, location, key, version = (_text(document, name) for name in
                                       ("storage", "location", "key", "version"))
    size = document.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadClaimMessage("size is not a whole number of bytes")
    if not key.startswith(CLAIM_PREFIX) or key == CLAIM_PREFIX:
        raise BadClaimMessage(f"key is not under {CLAIM_PREFIX}")
    problem = unsafe_key_reason(key)
    if problem:
        raise BadClaimMessage(f"key refused: {problem}")
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise BadClaimMessage("version is not size:mtime")
    if int(matched.group(1)) != size:
        raise BadClaimMessage("size is not the size in version")
    return ClaimMessage(storage, location, key, version, size)


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise BadClaimMessage(f"{name} is not a non-empty string")
    return value


@dataclass(frozen=True)
class SendOutcome:
    """What became of the claims of one send: ``refused`` were certainly not queued (SQS said
    so, or refused the call); ``unknown`` may or may not have been (the call itself failed on
    the way)."""

    sent: tuple[ClaimMessage, ...] = ()
    refused: tuple[ClaimMessage, ...] = ()
    unknown: tuple[ClaimMessage, ...] = ()
    reason: str = ""


class ClaimsQueue:
    """Sends claims to the queue at ``url``, ten per SendMessageBatch call."""

    def __init__(self, sqs: Any, url: str) -> None:
        self._sqs = sqs
        self.url = url

    def send(self, claims: Sequence[ClaimMessage]) -> SendOutcome:
        if len(claims) > BATCH_ENTRIES:
            raise ValueError(f"at most {BATCH_ENTRIES} claims per call")
        if not claims:
            return SendOutcome()
        entries = [{"Id": str(n), "MessageBody": claim.body()} for n, claim in enumerate(claims)]
        try:
            answer = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 (sorted below into refused and unknown)
            if _is_refusal(exc):
                return SendOutcome(refused=tuple(claims), reason=str(exc))
            return SendOutcome(unknown=tuple(claims), reason=str(exc))
        failed = {str(f.get("Id")): str(f.get("Message") or f.get("Code") or "")
                  for f in answer.get("Failed") or []}
        return SendOutcome(
            sent=tuple(c for n, c in enumerate(claims) if str(n) not in failed),
            refused=tuple(c for n, c in enumerate(claims) if str(n) in failed),
            reason="; ".join(sorted(set(failed.values()))))


def _is_refusal(exc: Exception) -> bool:
    """An answer from SQS (access denied, no such queue, throttled): nothing was queued. A
    connection that broke or timed out may have queued the batch all the same."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)
