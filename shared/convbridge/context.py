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
from dataclasses import asdict, dataclass
from hashlib import sha256

from convbridge.errors import ContextError

VERSION = 1


@dataclass(frozen=True)
class JobContext:
    rule: str
    storage: str
    location: str
    key: str
    version: str | None
    output_key: str
    route: str
    issued_at: int
    nonce: str

    @classmethod
    def new(cls, *, rule: str, storage: str, location: str, key: str, version: str | None,
            output_key: str, route: str) -> JobContext:
        return cls(rule=rule, storage=storage, location=location, key=key, version=version,
                   output_key=output_key, route=route, issued_at=int(time.time()),
                   nonce=secrets.token_hex(8))


def sign_context(context: JobContext, key: bytes) -> str:
    payload = json.dumps({"v": VERSION, **asdict(context)}, separators=(",", ":"),
                         ensure_ascii=False).encode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(key, body.encode(), sha256).hexdigest()
    return f"{body}.{mac}"


def verify_context(token: str | None, key: bytes, *, max_age_seconds: int) -> JobContext:
    if not token or "." not in token:
        raise ContextError("job context missing")
    body, _, mac = token.rpartition(".")
    expected = hmac.new(key, body.encode(), sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        raise ContextError("job context signature does not verify")
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if data.pop("v") != VERSION:
            raise ContextError("job context version unsupported")
        context = JobContext(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ContextError("job context malformed") from exc
    if time.time() - context.issued_at > max_age_seconds:
        raise ContextError("job context expired")
    return context
