"""At-least-once delivery made exactly-once where it matters: claims in DynamoDB.

Two things must happen once however often an event arrives: starting a job for one upload
(keyed on storage, location, key, version and rule) and settling a job context (keyed on the
context's nonce, never on a job id a caller names). Both use aws-lambda-powertools Idempotency
with its DynamoDB persistence layer:

* the first caller records the claim as in progress, runs the action, and stores its result;
* a later duplicate gets the stored result back as a :class:`Claim` marked ``replayed``, and
  runs nothing;
* a duplicate arriving while the first is still running gets :class:`ClaimInProgress`
  (SQS redelivers it later, when the stored result answers it);
* if the action raises, the claim is deleted, so a failed submission can be retried.

With a registered Lambda context, an in-progress claim expires with the invocation, so a
function that timed out mid-claim does not block its event forever. Stored claims expire after
``CONVBRIDGE_CLAIM_EXPIRY_SECONDS``, which settings keep at least as long as a job context
lives; the settled result record stops a second settle on its own as well.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from convbridge.errors import ConvbridgeError, StorageError

DEFAULT_EXPIRY_SECONDS = 7 * 24 * 3600

#: what a claimed action returns: a dataclass of JSON values, stored as its fields
Result = TypeVar("Result")


class ClaimInProgress(ConvbridgeError):
    """Another invocation holds this claim right now; try again later."""


@dataclass(frozen=True)
class Claim(Generic[Result]):
    """The result of a claimed action: ``replayed`` when an earlier call ran it and this one
    only got its stored result back."""

    result: Result
    replayed: bool


class ClaimStore(Protocol):
    """What the pipeline needs of claims: :class:`Claims` in Lambda,
    ``convbridge.testing.MemoryClaims`` in unit tests."""

    def register_lambda_context(self, context: Any) -> None: ...

    def once(self, scope: str, key: Mapping[str, Any], action: Callable[[], Result],
             result_type: type[Result]) -> Claim[Result]: ...


def stored_result(result: object) -> dict[str, Any]:
    """A claimed action's dataclass result as the JSON object the claim stores."""
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"a claimed action returns a dataclass, not {type(result).__name__}")
    return dataclasses.asdict(result)


def restored_result(document: Mapping[str, Any], result_type: type[Result]) -> Result:
    """A stored result as ``result_type`` again; fields it no longer has are dropped, so a
    claim stored by an earlier release still answers."""
    names = {item.name for item in dataclasses.fields(result_type)}  # type: ignore[arg-type]
    return result_type(**{name: value for name, value in document.items() if name in names})


class Claims:
    def __init__(self, table_name: str, dynamodb_client: Any, *,
                 expires_after_seconds: int = DEFAULT_EXPIRY_SECONDS) -> None:
        # powertools' idempotency module costs ~140 ms to import: only functions that claim pay
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

        self._table_name = table_name
        self._client = dynamodb_client
        self._config = IdempotencyConfig(
            event_key_jmespath="key",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=expires_after_seconds,
            response_hook=_mark_replayed,
        )
        self._wrapped: dict[str, Callable[..., dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def register_lambda_context(self, context: Any) -> None:
        if context is not None and hasattr(context, "get_remaining_time_in_millis"):
            self._config.register_lambda_context(context)

    def once(self, scope: str, key: Mapping[str, Any], action: Callable[[], Result],
             result_type: type[Result]) -> Claim[Result]:
        """Run ``action`` once per (scope, key); duplicates get its stored result, replayed.
        ``action`` returns a ``result_type``, a dataclass of JSON values."""
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        )

        wrapped = self._wrapper(scope)
        try:
            stored = dict(wrapped(claim={"key": dict(key),
                                         "action": lambda: stored_result(action())}))
        except IdempotencyAlreadyInProgressError as exc:
            raise ClaimInProgress(f"{scope} claim is held by another invocation") from exc
        except IdempotencyPersistenceLayerError as exc:
            raise StorageError(f"idempotency table unavailable: {type(exc).__name__}") from exc
        replayed = bool(stored.pop(_REPLAYED, False))
        return Claim(restored_result(stored, result_type), replayed)

    def _wrapper(self, scope: str) -> Callable[..., dict[str, Any]]:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            idempotent_function,
        )

        with self._lock:
            if scope not in self._wrapped:

                def run(claim: dict[str, Any]) -> dict[str, Any]:
                    result: dict[str, Any] = claim["action"]()
                    return result

                # One persistence layer per scope: powertools keeps the key prefix on the layer
                # object, so scopes sharing one would write each other's claims when they run
                # on concurrent threads.
                persistence = DynamoDBPersistenceLayer(table_name=self._table_name,
                                                       boto3_client=self._client)
                self._wrapped[scope] = idempotent_function(
                    run, data_keyword_argument="claim", persistence_store=persistence,
                    config=self._config, key_prefix=f"convbridge.{scope}",
                )
            return self._wrapped[scope]


#: the key powertools' response hook adds to a stored result it hands back
_REPLAYED = "replayed"


def _mark_replayed(response: Any, idempotent_data: Any) -> Any:
    if isinstance(response, dict):
        return {**response, _REPLAYED: True}
    return response
