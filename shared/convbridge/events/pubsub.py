"""Cloud Storage notifications delivered over HTTP -> ``ObjectRef``s: Pub/Sub push envelopes and
CloudEvents.

A Pub/Sub push request carries one message. Its ``attributes`` name the event (``eventType``),
the bucket (``bucketId``), the object (``objectId``) and its generation (``objectGeneration``);
with the JSON_API_V1 payload format its ``data`` is the base64 of the object resource, which adds
the size and custom metadata (with NONE there is no data). Eventarc delivers the same object
resource as a CloudEvent of type ``google.cloud.storage.object.v1.finalized``, in binary content
mode (``ce-*`` headers, the resource as the body) or structured mode (one
``application/cloudevents+json`` document). Only a finalized object (a completed upload or
overwrite) starts a job; deletes, archives and metadata updates are skipped with a reason.
Object names arrive unencoded, so unlike S3 keys nothing is decoded. Nothing here raises on bad
input, and only the standard library is imported.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from convbridge.events import ParsedEvents
from convbridge.model import ObjectRef

__all__ = [
    "FINALIZED_TYPE",
    "OBJECT_FINALIZE",
    "PushDelivery",
    "parse_cloudevent",
    "parse_pubsub_envelope",
    "parse_push_request",
]

STORAGE = "gcs"
#: the Pub/Sub notification event that means "an upload completed"
OBJECT_FINALIZE = "OBJECT_FINALIZE"
#: its CloudEvents name
FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"
CLOUDEVENTS_JSON = "application/cloudevents+json"
#: CloudEvents ``source`` of a Cloud Storage event: the bucket follows
SOURCE_PREFIX = "//storage.googleapis.com/projects/_/buckets/"
#: CloudEvents ``subject`` of a Cloud Storage event: the object name follows
SUBJECT_PREFIX = "objects/"


class MalformedNotification(ValueError):
    """A notification lacks a field or holds one of the wrong type; the message names it."""


@dataclass(frozen=True)
class PushDelivery:
    """One HTTP delivery. ``form`` is ``"pubsub"`` or ``"cloudevent"``, or None when the body
    was neither (the caller answers 400: something other than our subscription is calling).
    ``delivery_attempt`` is Pub/Sub's count, sent only when the subscription has a dead-letter
    policy."""

    form: str | None
    events: ParsedEvents
    delivery_attempt: int | None = None


def parse_push_request(headers: Mapping[str, str], body: bytes) -> PushDelivery:
    """Tell the forms apart: ``ce-specversion`` marks a binary-mode CloudEvent, the
    CloudEvents media type (or a ``specversion`` field) a structured one, and a ``message``
    object a Pub/Sub push envelope."""
    fields = {name.lower(): value for name, value in headers.items()}
    if "ce-specversion" in fields:
        attributes = {name[3:]: value for name, value in fields.items() if name.startswith("ce-")}
        data, problem = _json(body)
        if problem:
            return PushDelivery("cloudevent", ParsedEvents.skip(
                f"{_cloudevent_label(attributes)}: body {problem}"))
        return PushDelivery("cloudevent", parse_cloudevent(attributes, data))
    document, problem = _json(body)
    if problem:
        return PushDelivery(None, ParsedEvents.skip(f"request body {problem}"))
    media_type = fields.get("content-type", "").split(";", 1)[0].strip().lower()
    if isinstance(document, Mapping):
        if media_type == CLOUDEVENTS_JSON or "specversion" in document:
            return PushDelivery("cloudevent", _parse_structured(document))
        if "message" in document:
            return PushDelivery("pubsub", parse_pubsub_envelope(document),
                                _delivery_attempt(document.get("deliveryAttempt")))
    return PushDelivery(None, ParsedEvents.skip(
        f"request body is neither a Pub/Sub push envelope nor a CloudEvent ({_shape(document)})"))


def parse_pubsub_envelope(envelope: Mapping[str, Any]) -> ParsedEvents:
    """The object a Pub/Sub push envelope announces, if it announces a finalized object."""
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        return ParsedEvents.skip("Pub/Sub push envelope: message is missing or not an object")
    message_id = message.get("messageId", message.get("message_id"))
    where = f"Pub/Sub message {message_id}" if isinstance(message_id, str) else "Pub/Sub message"
    attributes = message.get("attributes")
    if not isinstance(attributes, Mapping) or not isinstance(attributes.get("eventType"), str):
        return ParsedEvents.skip(f"{where}: no eventType attribute; not a Cloud Storage "
                                 "notification")
    event_type = attributes["eventType"]
    if event_type != OBJECT_FINALIZE:
        target = _target(attributes.get("bucketId"), attributes.get("objectId"))
        return ParsedEvents.skip(f"{where}: {event_type} is not an object finalization{target}")
    try:
        bucket = _text(attributes, "bucketId")
        name = _text(attributes, "objectId")
        generation = _generation(attributes.get("objectGeneration"), "objectGeneration")
        resource = _resource(message.get("data"))
        if resource is None:  # payload format NONE: the attributes say all there is
            return ParsedEvents.of(ObjectRef(STORAGE, bucket, name, generation))
        _agree(resource, bucket, name, generation, "data")
        return ParsedEvents.of(ObjectRef(STORAGE, bucket, name, generation,
                                         _size(resource.get("size")), _metadata(resource)))
    except MalformedNotification as exc:
        return ParsedEvents.skip(f"{where}: malformed Cloud Storage notification: {exc}")


def parse_cloudevent(attributes: Mapping[str, Any], data: Any) -> ParsedEvents:
    """The object a Cloud Storage CloudEvent announces, if it is ``...object.v1.finalized``.
    ``attributes`` are the context attributes without the ``ce-`` prefix; ``data`` is the
    decoded object resource."""
    where = _cloudevent_label(attributes)
    version = attributes.get("specversion")
    if not isinstance(version, str) or not version.startswith("1."):
        return ParsedEvents.skip(f"{where}: specversion {version!r} is not 1.x")
    event_type = attributes.get("type")
    bucket = _after(attributes.get("source"), SOURCE_PREFIX)
    name = _after(attributes.get("subject"), SUBJECT_PREFIX)
    if event_type != FINALIZED_TYPE:
        return ParsedEvents.skip(f"{where}: type {event_type!r} is not {FINALIZED_TYPE}"
                                 f"{_target(bucket, name)}")
    if not isinstance(data, Mapping):
        return ParsedEvents.skip(f"{where}: malformed Cloud Storage event: data is not an "
                                 "object resource")
    try:
        bucket = bucket or _text(data, "bucket")
        name = name or _text(data, "name")
        generation = _generation(data.get("generation"), "data.generation")
        _agree(data, bucket, name, generation, "data")
        return ParsedEvents.of(ObjectRef(STORAGE, bucket, name, generation,
                                         _size(data.get("size")), _metadata(data)))
    except MalformedNotification as exc:
        return ParsedEvents.skip(f"{where}: malformed Cloud Storage event: {exc}")


def _parse_structured(document: Mapping[str, Any]) -> ParsedEvents:
    if "data_base64" in document and "data" not in document:
        return ParsedEvents.skip(f"{_cloudevent_label(document)}: data_base64 is not a Cloud "
                                 "Storage object resource")
    return parse_cloudevent(document, document.get("data"))


def _cloudevent_label(attributes: Mapping[str, Any]) -> str:
    event_id = attributes.get("id")
    return f"CloudEvent {event_id}" if isinstance(event_id, str) and event_id else "CloudEvent"


def _json(body: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(body), None
    except json.JSONDecodeError as exc:
        return None, f"is not JSON ({exc.msg} at character {exc.pos})"
    except (ValueError, RecursionError) as exc:  # bad UTF-8, absurd nesting
        return None, f"is not readable JSON ({type(exc).__name__})"


def _resource(data: Any) -> Mapping[str, Any] | None:
    """The object resource in ``message.data`` (base64 JSON), or None when there is none."""
    if data is None or data == "":
        return None
    if not isinstance(data, str):
        raise MalformedNotification(f"data is not a base64 string: {type(data).__name__}")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedNotification("data is not base64") from exc
    resource, problem = _json(decoded)
    if problem:
        raise MalformedNotification(f"data {problem}")
    if not isinstance(resource, Mapping):
        raise MalformedNotification("data is not a JSON object")
    return resource


def _agree(resource: Mapping[str, Any], bucket: str, name: str, generation: str,
           where: str) -> None:
    """The resource must describe the object the attributes name: a message that says two
    things is not acted on."""
    for field, expected in (("bucket", bucket), ("name", name), ("generation", generation)):
        value = resource.get(field)
        if value is not None and str(value) != expected:
            raise MalformedNotification(f"{where}.{field} is {value!r} but the event names "
                                        f"{expected!r}")


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"{name} is missing or not a non-empty string: {value!r}")
    return value


def _generation(value: Any, name: str) -> str:
    """Generations are int64s, which the JSON API spells as decimal strings."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
        return str(int(value))
    raise MalformedNotification(f"{name} is not a generation number: {value!r}")


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise MalformedNotification(f"size is not a byte count: {value!r}")


def _metadata(resource: Mapping[str, Any]) -> dict[str, str]:
    found = resource.get("metadata")
    if not isinstance(found, Mapping):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, str)}


def _delivery_attempt(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _after(value: Any, prefix: str) -> str | None:
    if isinstance(value, str) and value.startswith(prefix) and len(value) > len(prefix):
        return value[len(prefix):]
    return None


def _target(bucket: Any, name: Any) -> str:
    if isinstance(bucket, str) and isinstance(name, str) and bucket and name:
        return f" (gs://{bucket}/{name})"
    return ""


def _shape(document: Any) -> str:
    if not isinstance(document, Mapping):
        return f"a JSON {type(document).__name__}"
    fields = ", ".join(sorted(str(name) for name in document)[:8])
    return f"top-level fields: {fields}" if fields else "an empty object"
