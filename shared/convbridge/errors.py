"""The exceptions convbridge raises, one tree so callers can catch at the depth they care about.

    ConvbridgeError
    ├── ConfigError                 settings or rules are unusable; fail the cold start loudly
    │   └── RulesError              the rules file has problems (all of them listed)
    ├── SecretError                 a secret could not be fetched or lacks a field
    ├── RejectedObject              a stored object that will not be converted (empty, too big, ...)
    ├── StorageError                a storage call failed (vendor error wrapped)
    │   ├── GrantError              a scoped credential could not be minted
    │   ├── StaleWrite              a conditional write lost to a newer one
    │   └── OutputRefused           the relay will not write a provider's output; not retried
    │       ├── OutputTooLarge      more bytes than announced or than max_output_bytes
    │       ├── OutputHostRefused   the output URL (or a redirect) is not an allowed download
    │       └── OutputCollision     an output's key holds an object not made from its source
    ├── ProviderError               the conversion provider refused or failed a call
    │   ├── ProviderRejected        4xx other than 429: retrying will not help
    │   └── ProviderUnavailable     429/5xx/connection errors that outlived the retry budget
    │       ├── ProviderBusy        "not now": a rate or concurrent-jobs limit; wait, then again
    │       └── ProviderOutcomeUnknown  a create request's answer was lost; it may have worked
    └── CallbackError               a provider callback that must not be trusted
        ├── CallbackTooLarge        body over the configured limit
        ├── CallbackSignatureError  provider signature missing or wrong
        └── ContextError            our job context is missing, forged, or matches no rule now

Vendor exceptions (botocore, httpx, yaml) are wrapped at the adapter boundary with
``raise ... from exc`` so nothing above the adapters needs to know which SDK was used. An
adapter keeps one table of :class:`VendorError` rows (vendor exception -> ours) and applies
it with :func:`vendor_errors` around each call into its SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

#: what the adapter was doing when its SDK raised: the words of our message, the conditions
#: a write carried; each adapter has its own
Call = TypeVar("Call")
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


class ConvbridgeError(Exception):
    """Base of every error convbridge raises on purpose."""


class ConfigError(ConvbridgeError):
    """The environment or configuration is unusable."""


class RulesError(ConfigError):
    """The rules file is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"rules file {source} has {len(self.problems)} problem(s):\n{listed}")


class SecretError(ConvbridgeError):
    """A secret could not be read. The message names the secret, never its value."""


class RejectedObject(ConvbridgeError):
    """An object that matched a rule but will not be converted; becomes a failure report."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class StorageError(ConvbridgeError):
    """A storage operation failed."""


class GrantError(StorageError):
    """A scoped credential could not be minted."""


class StaleWrite(StorageError):
    """The object changed since the revision a conditional write expected."""


class OutputRefused(StorageError):
    """The relay refuses a provider's output for what it is, not for a passing fault:
    downloading it again would be refused again, so it is reported at once with ``code``."""

    code: ClassVar[str] = "OUTPUT_REFUSED"


class OutputTooLarge(OutputRefused):
    """The download ran (or was announced) past the announced size or the rule's
    ``max_output_bytes``; what was streamed so far was discarded."""

    code = "OUTPUT_TOO_LARGE"


class OutputHostRefused(OutputRefused):
    """The output URL, or a redirect from it, is not https on a host the provider's dialect
    serves downloads from; it was never requested."""

    code = "OUTPUT_HOST_REFUSED"


class OutputCollision(OutputRefused):
    """An output write found its key taken by an object the bridge did not write for the same
    source; the object is left as it is and the job reports ``OUTPUT_COLLISION``."""

    code = "OUTPUT_COLLISION"


class ProviderError(ConvbridgeError):
    """A conversion provider refused or failed a request."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message if status is None else f"HTTP {status}: {message}")


class ProviderRejected(ProviderError):
    """The provider answered 4xx (not 429); the request itself is wrong and will not be retried."""


class ProviderJobUnknown(ProviderRejected):
    """The provider does not know the job (404): it was deleted or expired there."""


class ProviderUnavailable(ProviderError):
    """Throttling, server errors or network failures outlasted the retry budget."""


class ProviderBusy(ProviderUnavailable):
    """The provider (or the bridge's own budget for it) says "not now": too many requests
    (429) or too many jobs at once (CloudConvert's 402). Nothing was created; the same
    request succeeds later, so the event is deferred instead of retried or reported.
    ``retry_after`` is the wait asked for (seconds), if any."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ProviderOutcomeUnknown(ProviderUnavailable):
    """A non-idempotent request (creating a job) may have been processed but its answer was
    lost; look for what it created before sending it again. ``retry_after`` is the wait the
    provider asked for (seconds), if it answered at all."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class CallbackError(ConvbridgeError):
    """A callback that is not acted on. ``status`` is the HTTP answer to give the caller."""

    status = 400


class CallbackTooLarge(CallbackError):
    status = 413


class CallbackSignatureError(CallbackError):
    status = 401


class ContextError(CallbackError):
    status = 401


def _always(call: object, exc: BaseException) -> bool:
    return True


@dataclass(frozen=True)
class VendorError(Generic[Call]):
    """One row of an adapter's table: an exception of ``vendor`` for which ``when`` holds
    becomes what ``ours`` builds from the call and the vendor's exception, raised from it.
    ``vendor`` is a function so that an SDK imported on first use is read only when one of
    its errors is being mapped. ``ours`` None: not a failure here (a stat of an absent object
    answers None); the block's remaining statements are skipped and the exception dropped."""

    vendor: Callable[[], ExceptionTypes]
    ours: Callable[[Call, BaseException], ConvbridgeError] | None
    when: Callable[[Call, BaseException], bool] = _always


@contextlib.contextmanager
def vendor_errors(table: Sequence[VendorError[Call]], call: Call) -> Iterator[None]:
    """The exceptions raised in the block as the first row of ``table`` that matches maps
    them; ours pass unchanged, and so does anything no row matches."""
    try:
        yield
    except ConvbridgeError:
        raise
    except Exception as exc:
        for row in table:
            if isinstance(exc, row.vendor()) and row.when(call, exc):
                if row.ours is None:
                    return
                raise row.ours(call, exc) from exc
        raise
