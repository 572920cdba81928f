"""S3 trigger payloads -> ``ObjectRef``s, for every way AWS delivers an S3 upload to a function.

Handles S3 event notifications (``Records[]`` with ``eventSource == "aws:s3"``) sent directly to
Lambda, EventBridge "Object Created" events, and either of these delivered through SQS (the body
holds the JSON) or SNS (an SNS notification whose ``Message`` holds it, also SNS inside SQS). Only
object-created events become objects; deletes, S3's ``s3:TestEvent``, other EventBridge detail
types and malformed records are skipped with a reason, and nothing here raises on bad input.
The small read-only classes give typed access to the raw dicts in the manner of
aws-lambda-powertools' data classes, decoding the key quirk once, but import only the standard
library so that a cold start does not pay for powertools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import unquote_plus

from convbridge.events import ParsedEvents
from convbridge.model import ObjectRef

__all__ = [
    "EventBridgeObjectEvent",
    "MalformedRecord",
    "S3NotificationRecord",
    "SnsNotification",
    "SqsRecord",
    "decode_event_key",
    "parse_s3_event",
    "parse_sqs_body",
]

STORAGE = "s3"

# Envelopes a document may still be unwrapped from. A Lambda event may hold SQS or SNS records; an
# SQS body may hold an SNS notification (SNS -> SQS without raw delivery); an SNS message holds
# only the S3 or EventBridge payload. Anything nested deeper is not something AWS produces.
_TOP_LEVEL = frozenset({"sqs", "sns"})
_IN_SQS_BODY = frozenset({"sns"})
_IN_SNS_MESSAGE: frozenset[str] = frozenset()


class MalformedRecord(ValueError):
    """A record lacks a field or holds one of the wrong type; the message names the field."""


def decode_event_key(raw: str) -> str:
    """Decode an object key exactly once, as S3 event payloads encode it.

    S3 notifications form-encode keys (``application/x-www-form-urlencoded``): ``+`` is a space
    and ``%2B`` a literal plus, so ``unquote_plus`` is the inverse, and applying it twice would
    turn an uploaded ``%25`` into ``%``. Nothing else is done to the result: no Unicode
    normalisation, no stripping of ``/`` or ``../``, since the key must name exactly the object
    the user uploaded and deciding what is acceptable belongs to the caller. Invalid UTF-8 after
    decoding means the payload did not come from S3, so it is rejected rather than patched with
    replacement characters that would name a different object.
    """
    try:
        return unquote_plus(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedRecord(f"object key {raw!r} is not percent-encoded UTF-8") from exc


class _JsonView:
    """Read-only typed access to one JSON object; missing or mistyped fields raise
    ``MalformedRecord`` naming the dotted path, so a skip reason says what was wrong."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def _lookup(self, path: str) -> tuple[bool, Any]:
        node: Any = self.raw
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def _optional(self, path: str) -> Any:
        return self._lookup(path)[1]

    def _text(self, path: str) -> str:
        found, value = self._lookup(path)
        if not found:
            raise MalformedRecord(f"{path} is missing")
        if not isinstance(value, str) or not value:
            raise MalformedRecord(f"{path} is not a non-empty string: {value!r}")
        return value

    def _optional_text(self, path: str) -> str | None:
        value = self._optional(path)
        if value is None:
            return None
        if not isinstance(value, str):
            raise MalformedRecord(f"{path} is not a string: {value!r}")
        return value

    def _size(self, path: str) -> int | None:
        value = self._optional(path)
        if value is None:
            return None
        # bool is an int subclass; a JSON true is not a byte count.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MalformedRecord(f"{path} is not a byte count: {value!r}")
        return value

    def _etag(self, path: str) -> str | None:
        value = self._optional_text(path)
        # ETags are quoted in HTTP headers and sometimes arrive quoted here; the quotes are not
        # part of the value, and keeping them would make one upload look like two versions.
        stripped = value.strip('"') if value is not None else ""
        return stripped or None

    def _version_id(self, path: str) -> str | None:
        value = self._optional_text(path)
        # "null" is the version id S3 gives every object written while versioning is off or
        # suspended: all overwrites share it, so it cannot tell two uploads apart; fall back to
        # the ETag for those, as for unversioned buckets.
        if not value or value == "null":
            return None
        return value


class S3NotificationRecord(_JsonView):
    """One ``Records[]`` entry of an S3 event notification (eventVersion 2.x), as S3 sends it to
    Lambda, SQS or SNS."""

    @property
    def event_source(self) -> str | None:
        return self._optional_text("eventSource")

    @property
    def event_version(self) -> str | None:
        return self._optional_text("eventVersion")

    @property
    def event_name(self) -> str:
        """``ObjectCreated:Put``, ``ObjectRemoved:Delete``...: the event type without ``s3:``."""
        return self._text("eventName")

    @property
    def is_supported_version(self) -> bool:
        # AWS bumps the major version only for incompatible changes and advises comparing it for
        # equality; a record without one is read as 2.x rather than refused.
        version = self.event_version
        return version is None or version.split(".", 1)[0] == "2"

    @property
    def is_object_created(self) -> bool:
        return self.event_name.startswith("ObjectCreated:")

    @property
    def bucket_name(self) -> str:
        return self._text("s3.bucket.name")

    @property
    def raw_key(self) -> str:
        """The key as it arrived: form-encoded."""
        return self._text("s3.object.key")

    @cached_property
    def key(self) -> str:
        """The key as the user uploaded it, decoded once."""
        return decode_event_key(self.raw_key)

    @property
    def size(self) -> int | None:
        """Absent on delete events."""
        return self._size("s3.object.size")

    @property
    def etag(self) -> str | None:
        return self._etag("s3.object.eTag")

    @property
    def version_id(self) -> str | None:
        """Present only for buckets with versioning enabled."""
        return self._version_id("s3.object.versionId")

    @property
    def sequencer(self) -> str | None:
        return self._optional_text("s3.object.sequencer")

    def object_ref(self) -> ObjectRef:
        return _object_ref(self.bucket_name, self.key, self.version_id, self.etag, self.size)


class EventBridgeObjectEvent(_JsonView):
    """An S3 event delivered by Amazon EventBridge (``source == "aws.s3"``)."""

    @property
    def id(self) -> str | None:
        return self._optional_text("id")

    @property
    def source(self) -> str | None:
        return self._optional_text("source")

    @property
    def detail_type(self) -> str:
        """``Object Created``, ``Object Deleted``, ``Object Restore Completed``..."""
        return self._text("detail-type")

    @property
    def is_object_created(self) -> bool:
        return self.detail_type == "Object Created"

    @property
    def reason(self) -> str | None:
        """The S3 API that caused the event: PutObject, CopyObject, CompleteMultipartUpload..."""
        return self._optional_text("detail.reason")

    @property
    def bucket_name(self) -> str:
        return self._text("detail.bucket.name")

    @property
    def raw_key(self) -> str:
        return self._text("detail.object.key")

    @cached_property
    def key(self) -> str:
        """The key as the user uploaded it, decoded once.

        AWS documents the encoding only for notifications; its EventBridge page
        (docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html) shows only a plain
        ``example-key`` and is silent. AWS's own consumers of this event decode it form-style as
        well: aws-lambda-powertools' ``S3EventBridgeNotificationObject.key`` returns
        ``unquote_plus(self["key"])``, and OpenSearch Data Prepper's ``S3EventBridgeNotification``
        reads it through ``SdkHttpUtils.urlDecode``. S3 builds both payloads from the same event,
        so the key is treated the same way: decoded once with ``unquote_plus``. Reading a
        form-encoded key raw would turn ``a b.png`` into ``a+b.png``, a different object.
        """
        return decode_event_key(self.raw_key)

    @property
    def size(self) -> int | None:
        return self._size("detail.object.size")

    @property
    def etag(self) -> str | None:
        return self._etag("detail.object.etag")

    @property
    def version_id(self) -> str | None:
        return self._version_id("detail.object.version-id")

    @property
    def sequencer(self) -> str | None:
        return self._optional_text("detail.object.sequencer")

    def object_ref(self) -> ObjectRef:
        return _object_ref(self.bucket_name, self.key, self.version_id, self.etag, self.size)


class SqsRecord(_JsonView):
    """One ``Records[]`` entry of a Lambda SQS event; ``body`` is the message as it was sent."""

    @property
    def message_id(self) -> str | None:
        return self._optional_text("messageId")

    @property
    def body(self) -> str:
        found, value = self._lookup("body")
        if not found:
            raise MalformedRecord("body is missing")
        if not isinstance(value, str):
            raise MalformedRecord(f"body is not a string: {type(value).__name__}")
        return value


class SnsNotification(_JsonView):
    """An SNS message: the ``Sns`` object of a Lambda SNS record, or the JSON body SQS receives
    from an SNS subscription without raw message delivery."""

    @property
    def type(self) -> str | None:
        return self._optional_text("Type")

    @property
    def message_id(self) -> str | None:
        return self._optional_text("MessageId")

    @property
    def topic_arn(self) -> str | None:
        return self._optional_text("TopicArn")

    @property
    def message(self) -> str:
        found, value = self._lookup("Message")
        if not found:
            raise MalformedRecord("Message is missing")
        if not isinstance(value, str):
            raise MalformedRecord(f"Message is not a string: {type(value).__name__}")
        return value


def parse_s3_event(event: Mapping[str, Any]) -> ParsedEvents:
    """Objects created by a Lambda event from S3, EventBridge, SQS or SNS, in delivery order.

    Never raises on the payload: every record that is not an object creation, or cannot be read,
    is listed in ``ignored`` with where it was and why.
    """
    return _parse_document(event, "", _TOP_LEVEL)


def parse_sqs_body(body: str) -> ParsedEvents:
    """Objects created according to one SQS message body (S3 notification, EventBridge event, or
    an SNS notification wrapping either); for triggers that handle SQS records one at a time."""
    return _parse_body(body, "SQS message body", _IN_SQS_BODY)


def _object_ref(
    bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None
) -> ObjectRef:
    return ObjectRef(
        storage=STORAGE,
        location=bucket,
        key=key,
        version=version_id if version_id is not None else etag,
        size=size,
    )


def _join(where: str, part: str) -> str:
    return f"{where}/{part}" if where else part


def _parse_document(doc: object, where: str, envelopes: frozenset[str]) -> ParsedEvents:
    """Tell the payload formats apart by the fields only that format has."""
    label = where or "event"
    if not isinstance(doc, Mapping):
        return ParsedEvents.skip(f"{label}: not a JSON object but {type(doc).__name__}")
    if "Records" in doc:
        return _parse_records(doc["Records"], where, envelopes)
    if doc.get("source") == "aws.s3":
        return _parse_eventbridge(EventBridgeObjectEvent(doc), where)
    if doc.get("Event") == "s3:TestEvent":
        # S3 sends this once to an SQS queue or SNS topic when a notification is configured.
        return ParsedEvents.skip(
            f"{label}: s3:TestEvent for bucket {doc.get('Bucket')!r}"
            " (sent when a notification is configured; no object was uploaded)"
        )
    if "TopicArn" in doc and "Type" in doc:
        if "sns" not in envelopes:
            return ParsedEvents.skip(f"{label}: SNS message nested where none is expected")
        return _parse_sns(SnsNotification(doc), where)
    return ParsedEvents.skip(f"{label}: not an S3 event ({_describe_shape(doc)})")


def _describe_shape(doc: Mapping[Any, Any]) -> str:
    source = doc.get("source")
    if isinstance(source, str):
        return f"EventBridge source {source!r}, detail-type {doc.get('detail-type')!r}"
    fields = ", ".join(sorted(str(name) for name in doc)[:8])
    return f"top-level fields: {fields}" if fields else "empty object"


def _parse_records(records: object, where: str, envelopes: frozenset[str]) -> ParsedEvents:
    if not isinstance(records, list):
        return ParsedEvents.skip(f"{where or 'event'}: Records is not a list")
    if not records:
        # Nothing to start, but a message that explains nothing would be a silent loss to whoever
        # reads the logs.
        return ParsedEvents.skip(f"{where or 'event'}: Records is empty")
    parts: list[ParsedEvents] = []
    for index, record in enumerate(records):
        here = _join(where, f"Records[{index}]")
        if not isinstance(record, Mapping):
            parts.append(ParsedEvents.skip(f"{here}: not a JSON object"))
            continue
        # Lambda spells it eventSource for S3 and SQS records, EventSource for SNS records.
        source = record.get("eventSource", record.get("EventSource"))
        if source == "aws:s3":
            parts.append(_parse_s3_record(S3NotificationRecord(record), here))
        elif source == "aws:sqs" and "sqs" in envelopes:
            parts.append(_parse_sqs_record(SqsRecord(record), here))
        elif source == "aws:sns" and "sns" in envelopes:
            parts.append(_parse_sns_record(record, here))
        elif source in ("aws:sqs", "aws:sns"):
            parts.append(
                ParsedEvents.skip(f"{here}: {source} record nested where none is expected")
            )
        else:
            parts.append(ParsedEvents.skip(f"{here}: eventSource {source!r} is not aws:s3"))
    return ParsedEvents.combine(parts)


def _parse_s3_record(record: S3NotificationRecord, here: str) -> ParsedEvents:
    try:
        if not record.is_supported_version:
            return ParsedEvents.skip(
                f"{here}: eventVersion {record.event_version!r} is not supported (expected 2.x)"
            )
        if not record.is_object_created:
            return ParsedEvents.skip(
                f"{here}: {record.event_name} is not an object creation{_target(record)}"
            )
        return ParsedEvents.of(record.object_ref())
    except MalformedRecord as exc:
        return ParsedEvents.skip(f"{here}: malformed S3 record: {exc}")


def _parse_eventbridge(event: EventBridgeObjectEvent, where: str) -> ParsedEvents:
    event_id = event.raw.get("id")
    here = _join(where, f"EventBridge event {event_id}" if event_id else "EventBridge event")
    try:
        if not event.is_object_created:
            return ParsedEvents.skip(
                f"{here}: detail-type {event.detail_type!r} is not 'Object Created'{_target(event)}"
            )
        return ParsedEvents.of(event.object_ref())
    except MalformedRecord as exc:
        return ParsedEvents.skip(f"{here}: malformed EventBridge S3 event: {exc}")


def _target(event: S3NotificationRecord | EventBridgeObjectEvent) -> str:
    """`` (s3://bucket/key)`` for a skip reason when both can be read, else nothing: the reason
    for skipping does not depend on them, so their absence must not hide it."""
    try:
        return f" (s3://{event.bucket_name}/{event.key})"
    except MalformedRecord:
        return ""


def _parse_sqs_record(record: SqsRecord, here: str) -> ParsedEvents:
    message_id = record.raw.get("messageId")
    if isinstance(message_id, str) and message_id:
        here = f"{here} (SQS message {message_id})"
    try:
        body = record.body
    except MalformedRecord as exc:
        return ParsedEvents.skip(f"{here}: malformed SQS record: {exc}")
    return _parse_body(body, _join(here, "body"), _IN_SQS_BODY)


def _parse_sns_record(record: Mapping[str, Any], here: str) -> ParsedEvents:
    sns = record.get("Sns")
    if not isinstance(sns, Mapping):
        return ParsedEvents.skip(f"{here}: malformed SNS record: Sns is missing or not an object")
    return _parse_sns(SnsNotification(sns), here)


def _parse_sns(notification: SnsNotification, where: str) -> ParsedEvents:
    label = where or "event"
    try:
        kind = notification.type
        if kind != "Notification":
            # SubscriptionConfirmation and UnsubscribeConfirmation carry no S3 payload.
            return ParsedEvents.skip(f"{label}: SNS {kind} message is not a notification")
        message = notification.message
    except MalformedRecord as exc:
        return ParsedEvents.skip(f"{label}: malformed SNS notification: {exc}")
    return _parse_body(message, _join(where, "Message"), _IN_SNS_MESSAGE)


def _parse_body(body: str, where: str, envelopes: frozenset[str]) -> ParsedEvents:
    if not isinstance(body, str):
        # Typed as str, but the value comes from a caller's event: refuse it, do not raise.
        return ParsedEvents.skip(f"{where}: not a string but {type(body).__name__}")
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedEvents.skip(f"{where}: not JSON ({exc.msg} at character {exc.pos})")
    except (ValueError, RecursionError) as exc:
        # Deeply nested JSON exhausts the parser's recursion; still one bad message, not a crash.
        return ParsedEvents.skip(f"{where}: not readable JSON ({type(exc).__name__})")
    return _parse_document(doc, where, envelopes)
