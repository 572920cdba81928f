"""The signed job context: where a job's results may go, sealed with the bridge's own key.

The trigger puts a context token in the job (the provider echoes it back, e.g. as CloudConvert's
``tag``). The webhook trusts a destination only if the token's HMAC verifies with our secret
and it still names a configured rule: a genuine provider signature alone never lets a caller
choose a bucket.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, fields
from hashlib import sha256
from typing import Any

from convbridge.errors import ContextError

VERSION = 1


@dataclass(frozen=True)
class JobContext:
    """Everything settling needs to know about the job's source and destination, so nothing
    is read back from an earlier record to rebuild them. ``source_size`` is None in contexts
    signed before it was carried."""

    rule: str
    storage: str
    location: str
    key: str
    version: str | None
    output_key: str
    route: str
    issued_at: int
    nonce: str
    source_size: int | None = None

    @classmethod
    def new(cls, *, rule: str, storage: str, location: str, key: str, version: str | None,
            output_key: str, route: str, source_size: int | None = None) -> JobContext:
        issued_ns = time.time_ns()
        return cls(rule=rule, storage=storage, location=location, key=key, version=version,
                   output_key=output_key, route=route, issued_at=issued_ns // 1_000_000_000,
                   nonce=ordered_nonce(issued_ns), source_size=source_size)


#: hex digits of the issue time (nanoseconds) that open a nonce made by :func:`ordered_nonce`
_ORDER_DIGITS = 16


def ordered_nonce(issued_ns: int) -> str:
    """A nonce that also tells when its context was issued, to the nanosecond: 16 hex digits
    of the time, then 64 random bits. Two submissions of one key are ordered by it (whole
    seconds, ``issued_at``, would tie two uploads in the same second); the random part keeps
    it unguessable and breaks a tie the same way wherever it is compared."""
    return f"{issued_ns:0{_ORDER_DIGITS}x}{secrets.token_hex(8)}"


def nonce_order(nonce: str | None) -> tuple[int, str] | None:
    """Where a nonce stands among submissions (issue time, then the nonce itself); None for a
    nonce of an earlier release (16 random hex digits), which came before every ordered one."""
    if nonce is None or len(nonce) != 2 * _ORDER_DIGITS:
        return None
    try:
        return int(nonce[:_ORDER_DIGITS], 16), nonce
    except ValueError:
        return None


def sign_context(context: JobContext, key: bytes) -> str:
    payload = json.dumps({"v": VERSION, **asdict(context)}, separators=(",", ":"),
                         ensure_ascii=False).encode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(key, body.encode(), sha256).hexdigest()
    return f"{body}.{mac}"


def verify_context(token: object, key: bytes, *, max_age_seconds: int) -> JobContext:
    """The context a token carries, or ContextError (401). The token comes from a caller
    (a callback body or URL) and may be anything: the HMAC is compared first, on bytes and in
    constant time, and only then is the payload decoded and each field's type checked."""
    if not isinstance(token, str) or "." not in token:
        raise ContextError("job context missing")
    body, _, mac = token.rpartition(".")
    # "replace": a token that is not ASCII cannot be ours, and must simply not match
    signed = body.encode("utf-8", errors="replace")
    expected = hmac.new(key, signed, sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, mac.encode("utf-8", errors="replace")):
        raise ContextError("job context signature does not verify")
    try:
        data = json.loads(base64.urlsafe_b64decode(signed + b"=" * (-len(signed) % 4)))
    except (ValueError, RecursionError) as exc:
        raise ContextError("job context malformed") from exc
    if not isinstance(data, dict) or data.pop("v", None) != VERSION:
        raise ContextError("job context version unsupported")
    if not _well_typed(data):
        raise ContextError("job context malformed")
    context = JobContext(**data)
    if time.time() - context.issued_at > max_age_seconds:
        raise ContextError("job context expired")
    return context


#: fields a context signed by an earlier release may lack
_ADDED_FIELDS = frozenset({"source_size"})


def _well_typed(data: dict[str, Any]) -> bool:
    """Exactly JobContext's fields (but for ones added since), each of its JSON type (a bool
    is not a count, and a count is one a float can hold)."""
    names = {item.name for item in fields(JobContext)}
    if not names - _ADDED_FIELDS <= set(data) <= names:
        return False
    issued_at, version = data["issued_at"], data["version"]
    size = data.get("source_size")
    texts = (value for name, value in data.items()
             if name not in {"issued_at", "version", "source_size"})
    return (_count(issued_at) and (size is None or _count(size))
            and (version is None or isinstance(version, str))
            and all(isinstance(value, str) for value in texts))


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**53
