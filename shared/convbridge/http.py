"""The one HTTP client convbridge uses to talk to providers: timeouts, retries, deadlines.

Providers throttle (429), fail over (502/503/504) and drop connections. :func:`send` retries
those with exponential backoff and full jitter, waits at least what ``Retry-After`` asks
(seconds or an HTTP date), and never sleeps past the invocation's deadline: a retry that
could not finish in time is not started. Other 4xx answers are returned at once; they are
the caller's to turn into a failure report with the provider's message.

A request that may have reached the provider but whose answer was lost (read timeout, a
connection dropped mid-answer, or a gateway's 502/503/504, which a load balancer may send
after the service behind it made the job) is not retried blindly when it is not idempotent:
it raises :class:`~convbridge.errors.ProviderOutcomeUnknown` so the caller can look for what
it created before trying again. Only answers that prove nothing was done (429, a connection
that was never made) are retried for such requests.

The relay's downloads go through :func:`open_download`: a provider's answer names the URL, so
it is treated as hostile. Only https URLs on the hosts the provider's dialect declares (see
:class:`HostPattern`) are requested, and redirects are followed by hand, each hop checked the
same way before it is requested.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from convbridge import __version__
from convbridge.errors import OutputHostRefused, OutputRefused, ProviderOutcomeUnknown

logger = logging.getLogger(__name__)

USER_AGENT = f"convbridge/{__version__}"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Answers after which a non-idempotent request may or may not have been acted on.
GATEWAY_STATUSES = frozenset({502, 503, 504})
#: Errors raised before the request could have reached the server: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Errors after which the server may or may not have acted on the request.
MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError,
              httpx.ReadError, httpx.WriteError)
DEFAULT_BUDGET_SECONDS = 60.0
#: Time kept back from the deadline for the work after the request (records, logging).
SAFETY_MARGIN_SECONDS = 2.0
#: Redirect hops a download may take; every one is checked against the same allow-list.
MAX_DOWNLOAD_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_PATTERN = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 20.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** attempt))


def make_client(
    timeout_seconds: float, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
        headers={"User-Agent": USER_AGENT},
        transport=transport,
        follow_redirects=False,
    )


@contextmanager
def deadline_from(get_remaining_ms: Callable[[], int] | None) -> Iterator[None]:
    """Bound every retry inside the block by the Lambda's remaining time."""
    if get_remaining_ms is None:
        end = time.monotonic() + DEFAULT_BUDGET_SECONDS
    else:
        end = time.monotonic() + get_remaining_ms() / 1000.0
    token = _deadline.set(end)
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left() -> float:
    end = _deadline.get()
    if end is None:
        return DEFAULT_BUDGET_SECONDS
    return end - time.monotonic() - SAFETY_MARGIN_SECONDS


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class GaveUp(Exception):
    """Retries ran out (attempts or time); carries the last response or error."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    idempotent: bool,
    retry_statuses: frozenset[int] = RETRY_STATUSES,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> httpx.Response:
    """Send with retries. Returns the final response (2xx or a non-retryable 4xx). Raises
    :class:`GaveUp` when retryable failures outlast the budget and ProviderOutcomeUnknown
    when a non-idempotent request's fate is unknown. ``retry_statuses`` narrows what is worth
    asking again where a status means something final for that URL."""
    last: httpx.Response | None = None
    reason = ""
    for attempt in range(policy.max_attempts):
        try:
            response = client.request(method, url, **kwargs)
        except NOT_SENT as exc:
            reason, last, wait = f"{type(exc).__name__}", None, policy.backoff(attempt)
        except MAYBE_SENT as exc:
            if not idempotent:
                raise ProviderOutcomeUnknown(
                    f"{method} {_path(url)}: {type(exc).__name__}; the request may have been "
                    "processed") from exc
            reason, last, wait = f"{type(exc).__name__}", None, policy.backoff(attempt)
        else:
            if response.status_code not in retry_statuses:
                return response
            asked = retry_after_seconds(response.headers.get("Retry-After"))
            if not idempotent and response.status_code in GATEWAY_STATUSES:
                raise ProviderOutcomeUnknown(
                    f"{method} {_path(url)}: HTTP {response.status_code}; the request may have "
                    "been processed", retry_after=asked)
            reason, last = f"HTTP {response.status_code}", response
            wait = max(asked, policy.backoff(attempt)) if asked is not None else policy.backoff(
                attempt)
        if attempt + 1 == policy.max_attempts:
            break
        left = seconds_left()
        if wait > left:
            raise GaveUp(f"{method} {_path(url)}: {reason}; the next try (in {wait:.1f} s) would "
                         f"pass the deadline ({max(left, 0):.1f} s left)", last)
        logger.info("%s %s: %s, retry %d in %.2f s", method, _path(url), reason, attempt + 1,
                    wait)
        sleep(wait)
    raise GaveUp(f"{method} {_path(url)}: {reason} after {policy.max_attempts} attempts", last)


def _path(url: str) -> str:
    """The URL without its query: query strings may carry signatures."""
    return url.split("?", 1)[0]


@dataclass(frozen=True)
class HostPattern:
    """One entry of a download allow-list: an exact host (``storage.cloudconvert.com``) or a
    suffix pattern (``*.cloudconvert.com``: any host below the domain, not the domain itself).
    Downloads are https only unless the entry was written ``http://host`` (the dev stack's
    loopback servers). Ports are not part of an entry."""

    pattern: str
    plain_http: bool = False

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Raises ValueError with the reason when ``text`` is not a host or ``*.domain``."""
        raw = text.strip().lower()
        plain_http = raw.startswith("http://")
        raw = raw.removeprefix("http://").removeprefix("https://").rstrip("/")
        if not _HOST_PATTERN.match(raw):
            raise ValueError(f"{text.strip()!r} is not a host name or *.domain (no port, no "
                             "path)")
        if raw.startswith("*.") and "." not in raw[2:]:
            raise ValueError(f"{text.strip()!r} would match every host of a top-level domain")
        return cls(raw, plain_http)

    def allows(self, url: httpx.URL) -> bool:
        if url.scheme != "https" and not (self.plain_http and url.scheme == "http"):
            return False
        # the encoded (ASCII) host is the one connected to
        host = url.raw_host.decode("ascii", "replace").lower().rstrip(".")
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:])
        return host == self.pattern

    def __str__(self) -> str:
        return f"http(s)://{self.pattern}" if self.plain_http else f"https://{self.pattern}"


@contextmanager
def open_download(client: httpx.Client, url: str, allowed: Sequence[HostPattern], *,
                  max_redirects: int = MAX_DOWNLOAD_REDIRECTS) -> Iterator[httpx.Response]:
    """A streamed GET of ``url`` whose every hop is on the allow-list: the URL and each
    redirect target are checked before they are requested, so a provider's answer (or a
    redirect from a host it named) can never make the bridge fetch an internal address such
    as ``169.254.169.254``. Yields the first answer that is not a redirect; raises
    :class:`OutputHostRefused` (naming the origin only: paths and queries carry tokens), or
    :class:`OutputRefused` after ``max_redirects`` hops."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise OutputHostRefused("the output URL is not a valid URL") from exc
    for hop in range(max_redirects + 1):
        if not any(entry.allows(target) for entry in allowed):
            listed = ", ".join(str(entry) for entry in allowed) or "none"
            what = "the output URL's origin" if hop == 0 else "a redirect to"
            raise OutputHostRefused(f"{what} {_origin(target)} is not an allowed download "
                                    f"origin (allowed: {listed}); it was not requested")
        with client.stream("GET", target, follow_redirects=False) as response:
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                yield response
                return
        try:
            target = target.join(location)
        except httpx.InvalidURL as exc:
            raise OutputHostRefused(f"{_origin(target)} redirected to an invalid URL") from exc
        logger.info("download redirected to %s", _origin(target))
    raise OutputRefused(f"the download was redirected more than {max_redirects} times")


def _origin(url: httpx.URL) -> str:
    """scheme://host[:port] of ``url``: enough to say where, nothing that authorises."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"
