"""At-least-once delivery made exactly-once where it matters: claims in DynamoDB.

Two things must happen once however often an event arrives: starting a job for one upload
(keyed on storage, location, key, version and rule) and settling a job context (keyed on the
context's nonce, never on a job id a caller names).

Settling uses aws-lambda-powertools Idempotency with its DynamoDB persistence layer
(:meth:`Claims.once`):

* the first caller records the claim as in progress, runs the action, and stores its result;
* a later duplicate gets the stored result back as a :class:`Claim` marked ``replayed``, and
  runs nothing;
* a duplicate arriving while the first is still running gets :class:`ClaimInProgress`
  (SQS redelivers it later, when the stored result answers it);
* if the action raises, the claim is deleted, so a failed settle can be retried.

Submitting takes one call instead of powertools' two (:meth:`Claims.claim_submission`): one
conditional PutItem stores a :class:`SubmitClaim` naming the submission's job context (nonce,
route, issue time) and an in-progress deadline (the invocation's remaining time). It is never
updated: the result record naming the same nonce, written once the job exists, is what
completes it (see ``convbridge.pipeline.submit``). A refused put answers with the holder's
item in the same call (ReturnValuesOnConditionCheckFailure), so a duplicate learns who holds
the upload without another read. Items powertools stored for submissions of the earlier
release (``COMPLETED`` with their result in ``data``) still answer as a replayed duplicate.

Stored claims expire after ``CONVBRIDGE_CLAIM_EXPIRY_SECONDS``, which settings keep at least as
long as a job context lives; the settled result record stops a second settle on its own as
well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from convbridge.errors import ConvbridgeError, StorageError

DEFAULT_EXPIRY_SECONDS = 7 * 24 * 3600
#: the in-progress deadline of a submit claim made outside Lambda: Lambda's longest run
DEFAULT_IN_PROGRESS_MS = 15 * 60 * 1000
#: the key prefix of submit claims, as powertools named them (``<key_prefix>#<md5>``), so an
#: earlier release's items are found under the same ids
SUBMIT_SCOPE = "submit"

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


@dataclass(frozen=True)
class SubmitClaim:
    """Who holds the submission of one upload: the job context's ``nonce``, ``route``,
    ``issued_at`` and ``source_size`` (so its context token can be signed again and its job
    looked up by tag), and ``deadline_ms`` (epoch milliseconds), after which its invocation
    has certainly ended. ``nonce`` is None for an item of the earlier release, whose stored
    result, once it had one, is ``completed``."""

    nonce: str | None
    route: str | None = None
    issued_at: int | None = None
    source_size: int | None = None
    deadline_ms: int | None = None
    completed: Mapping[str, Any] | None = None

    def ended(self, now_ms: int) -> bool:
        """The holder's invocation is over: it finished or died, and cannot write any more."""
        return self.deadline_ms is not None and self.deadline_ms < now_ms


@dataclass(frozen=True)
class Held:
    """The answer to a submit claim: ``ours`` (``claim`` is then the item as stored, deadline
    included), or held by another (``claim`` is its item, unchanged)."""

    claim: SubmitClaim
    ours: bool


class ClaimStore(Protocol):
    """What the pipeline needs of claims: :class:`Claims` in Lambda,
    ``convbridge.testing.MemoryClaims`` in unit tests."""

    def register_lambda_context(self, context: Any) -> None: ...

    def once(self, scope: str, key: Mapping[str, Any], action: Callable[[], Result],
             result_type: type[Result]) -> Claim[Result]: ...

    def claim_submission(self, key: Mapping[str, Any], claim: SubmitClaim, *,
                         replacing: SubmitClaim | None = None) -> Held:
        """Hold the submission of ``key`` for ``claim`` (its deadline is set here), or learn
        who holds it. With ``replacing``, take it over from exactly that holder (one whose
        invocation ended)."""
        ...

    def release_submission(self, key: Mapping[str, Any], nonce: str) -> None:
        """Give up a claim that started no job, so a redelivery may submit at once."""
        ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def claim_id(scope: str, key: Mapping[str, Any]) -> str:
    """The item id powertools gives a claim of ``scope`` on ``key`` (``event_key_jmespath``
    "key", md5 of the sorted JSON)."""
    digest = hashlib.md5(json.dumps(dict(key), sort_keys=True).encode(),
                         usedforsecurity=False).hexdigest()
    return f"convbridge.{scope}#{digest}"


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
        self._expires_after_seconds = expires_after_seconds
        self._remaining_ms: Callable[[], int] | None = None
        self._wrapped: dict[str, Callable[..., dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def register_lambda_context(self, context: Any) -> None:
        if context is not None and hasattr(context, "get_remaining_time_in_millis"):
            self._config.register_lambda_context(context)
            self._remaining_ms = context.get_remaining_time_in_millis

    def claim_submission(self, key: Mapping[str, Any], claim: SubmitClaim, *,
                         replacing: SubmitClaim | None = None) -> Held:
        """One PutItem: created where there is no live item, or over exactly ``replacing``."""
        import botocore.exceptions

        moment = now_ms()
        remaining = self._remaining_ms() if self._remaining_ms else DEFAULT_IN_PROGRESS_MS
        stored = dataclasses.replace(claim, deadline_ms=moment + remaining, completed=None)
        item = _submit_item(claim_id(SUBMIT_SCOPE, key), stored,
                            expires_at=moment // 1000 + self._expires_after_seconds)
        names = {"#id": "id", "#expiry": "expiration"}
        values: dict[str, Any] = {":now": {"N": str(moment // 1000)}}
        condition = "attribute_not_exists(#id) OR #expiry < :now"
        if replacing is not None:
            names["#deadline"] = "in_progress_expiration"
            values[":deadline"] = {"N": str(replacing.deadline_ms)}
            if replacing.nonce is not None:  # one of ours: it names its nonce
                names["#nonce"] = "nonce"
                values[":nonce"] = {"S": replacing.nonce}
                condition += " OR (#nonce = :nonce AND #deadline = :deadline)"
            else:  # the earlier release's powertools claim, in progress when it died
                names["#status"] = "status"
                values[":inprogress"] = {"S": "INPROGRESS"}
                condition += " OR (#status = :inprogress AND #deadline = :deadline)"
        try:
            self._client.put_item(TableName=self._table_name, Item=item,
                                  ConditionExpression=condition,
                                  ExpressionAttributeNames=names,
                                  ExpressionAttributeValues=values,
                                  ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StorageError(f"claims table unavailable: {_code(exc)}") from exc
            holder: Mapping[str, Any] = exc.response.get("Item") or {}  # type: ignore[assignment]
            return Held(_holder(holder), ours=False)
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"claims table unavailable: {type(exc).__name__}") from exc
        return Held(stored, ours=True)

    def release_submission(self, key: Mapping[str, Any], nonce: str) -> None:
        import botocore.exceptions

        try:
            self._client.delete_item(
                TableName=self._table_name, Key={"id": {"S": claim_id(SUBMIT_SCOPE, key)}},
                ConditionExpression="#nonce = :nonce", ExpressionAttributeNames={
                    "#nonce": "nonce"}, ExpressionAttributeValues={":nonce": {"S": nonce}})
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StorageError(f"claims table unavailable: {_code(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"claims table unavailable: {type(exc).__name__}") from exc

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


#: the status of a submit claim item (powertools' own are INPROGRESS and COMPLETED)
SUBMITTING = "SUBMITTING"


def _submit_item(item_id: str, claim: SubmitClaim, *, expires_at: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": {"S": item_id}, "status": {"S": SUBMITTING},
        "expiration": {"N": str(expires_at)},
        "in_progress_expiration": {"N": str(claim.deadline_ms)},
    }
    if claim.nonce is not None:
        item["nonce"] = {"S": claim.nonce}
    if claim.route is not None:
        item["route"] = {"S": claim.route}
    if claim.issued_at is not None:
        item["issued_at"] = {"N": str(claim.issued_at)}
    if claim.source_size is not None:
        item["source_size"] = {"N": str(claim.source_size)}
    return item


def _holder(item: Mapping[str, Any]) -> SubmitClaim:
    """The holder an item names; an item of the earlier release (powertools: no nonce, its
    result as JSON in ``data`` once COMPLETED) names no context."""

    def text(name: str) -> str | None:
        value = item.get(name, {}).get("S")
        return value if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = item.get(name, {}).get("N")
        try:
            return int(value) if isinstance(value, str) else None
        except ValueError:
            return None

    completed = None
    if text("status") == "COMPLETED":
        try:
            document = json.loads(text("data") or "{}")
        except ValueError:
            document = {}
        completed = document if isinstance(document, dict) else {}
    return SubmitClaim(nonce=text("nonce"), route=text("route"), issued_at=number("issued_at"),
                       source_size=number("source_size"),
                       deadline_ms=number("in_progress_expiration"), completed=completed)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or type(exc).__name__)
