"""Cloud Storage notifications over HTTP (Pub/Sub push envelopes, CloudEvents in binary and
structured mode) become the objects a user uploaded, and nothing else starts a job.

The fixtures in tests/events/ follow the layout Google sends (pubsub_*.json: push request bodies;
cloudevent_gcs_*.json: the request's headers and body as Eventarc delivers them). The variations
below change one thing each, so a test shows one behaviour a user would notice.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from convbridge.events.pubsub import PushDelivery, parse_push_request
from convbridge.model import ObjectRef

EVENTS = Path(__file__).resolve().parents[1] / "events"
BUCKET = "convbridge-uploads"
JSON_HEADERS = {"Content-Type": "application/json"}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return data


def request(name: str) -> tuple[dict[str, str], bytes]:
    """A fixture as the HTTP request the trigger receives."""
    document = load(name)
    if name.startswith("cloudevent_"):
        return document["headers"], json.dumps(document["body"]).encode()
    return JSON_HEADERS, json.dumps(document).encode()


def parse(document: Any, headers: dict[str, str] | None = None) -> PushDelivery:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_push_request(headers or JSON_HEADERS, body)


def ref(key: str, generation: str, size: int | None) -> ObjectRef:
    return ObjectRef(storage="gcs", location=BUCKET, key=key, version=generation, size=size)


def data_of(envelope: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(envelope["message"]["data"]))
    return decoded


def with_data(envelope: dict[str, Any], resource: Any) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    raw = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    changed["message"]["data"] = base64.b64encode(raw).decode()
    return changed


# What each fixture must amount to: its form, the objects, and a text each skip reason contains.
FIXTURES: dict[str, tuple[str, list[ObjectRef], list[str]]] = {
    "pubsub_finalize.json": (
        "pubsub", [ref("inbox/Quarterly report (final).docx", "1715678497482103", 48213)], []),
    "pubsub_finalize_overwrite.json": (
        "pubsub", [ref("inbox/scans/résumé 2024.pdf", "1715680102339571", 26214400)], []),
    "pubsub_finalize_no_payload.json": (
        "pubsub", [ref("inbox/photos/my holiday + friends.png", "1715678497599123", None)], []),
    "pubsub_delete.json": (
        "pubsub", [], ["OBJECT_DELETE is not an object finalization "
                       "(gs://convbridge-uploads/inbox/Quarterly report (final).docx)"]),
    "pubsub_metadata_update.json": ("pubsub", [], ["OBJECT_METADATA_UPDATE"]),
    "cloudevent_gcs_finalized_binary.json": (
        "cloudevent", [ref("inbox/photos/my holiday + friends.png", "1715678497599123", 734003)],
        []),
    "cloudevent_gcs_finalized_structured.json": (
        "cloudevent", [ref("inbox/scans/résumé 2024.pdf", "1715680102339571", 26214400)], []),
    "cloudevent_gcs_deleted.json": (
        "cloudevent", [], ["'google.cloud.storage.object.v1.deleted' is not "
                           "google.cloud.storage.object.v1.finalized"]),
}


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in EVENTS.glob("pubsub_*.json")}
    names |= {p.name for p in EVENTS.glob("cloudevent_gcs_*.json")}
    assert names == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_parses_to_what_was_uploaded(name: str) -> None:
    form, objects, reasons = FIXTURES[name]
    delivery = parse_push_request(*request(name))
    assert delivery.form == form
    assert list(delivery.events.objects) == objects
    assert len(delivery.events.ignored) == len(reasons)
    for reason, expected in zip(delivery.events.ignored, reasons, strict=True):
        assert expected in reason


def test_custom_metadata_travels_with_the_object() -> None:
    (found,) = parse(load("pubsub_finalize_overwrite.json")).events.objects
    assert found.metadata == {"uploaded-by": "scanner-3"}


def test_delivery_attempt_is_read_only_when_pubsub_sends_it() -> None:
    assert parse(load("pubsub_finalize_overwrite.json")).delivery_attempt == 2
    assert parse(load("pubsub_finalize.json")).delivery_attempt is None
    envelope = load("pubsub_finalize.json")
    envelope["deliveryAttempt"] = "2"
    assert parse(envelope).delivery_attempt is None


@pytest.mark.parametrize("name", ["a+b.png", "50%25 off.png", "räksmörgås.png", "a%2Fb.png"])
def test_object_names_are_taken_as_sent_never_decoded(name: str) -> None:
    envelope = load("pubsub_finalize.json")
    key = f"inbox/{name}"
    envelope["message"]["attributes"]["objectId"] = key
    resource = data_of(envelope)
    resource["name"] = key
    (found,) = parse(with_data(envelope, resource)).events.objects
    assert found.key == key


def test_two_generations_of_one_name_are_distinct_objects() -> None:
    first = load("pubsub_finalize.json")
    second = copy.deepcopy(first)
    second["message"]["attributes"]["objectGeneration"] = "1715678499999999"
    resource = data_of(second)
    resource["generation"] = "1715678499999999"
    a = parse(first).events.objects[0]
    b = parse(with_data(second, resource)).events.objects[0]
    assert a.key == b.key and a.version != b.version and a != b


@pytest.mark.parametrize(("change", "expected"), [
    (lambda e: e["message"]["attributes"].pop("objectId"), "objectId is missing"),
    (lambda e: e["message"]["attributes"].pop("bucketId"), "bucketId is missing"),
    (lambda e: e["message"]["attributes"].update(objectGeneration="abc"),
     "objectGeneration is not a generation number"),
    (lambda e: e["message"]["attributes"].update(objectGeneration="0"),
     "objectGeneration is not a generation number"),
    (lambda e: e["message"].update(data="%%% not base64 %%%"), "data is not base64"),
    (lambda e: e["message"].update(data=12), "data is not a base64 string"),
    (lambda e: e["message"].update(data=base64.b64encode(b"{oops").decode()), "data is not JSON"),
    (lambda e: e["message"].update(data=base64.b64encode(b"[1]").decode()),
     "data is not a JSON object"),
    (lambda e: e["message"].update(data=base64.b64encode(b"\xc3\x28").decode()),
     "data is not readable JSON"),
])
def test_malformed_notifications_are_skipped_with_the_field_named(change: Any,
                                                                  expected: str) -> None:
    envelope = load("pubsub_finalize.json")
    change(envelope)
    delivery = parse(envelope)
    assert delivery.form == "pubsub" and delivery.events.objects == ()
    (reason,) = delivery.events.ignored
    assert reason.startswith("Pub/Sub message 11020834875476401: malformed")
    assert expected in reason


@pytest.mark.parametrize(("field", "value"), [
    ("name", "inbox/other.docx"), ("bucket", "someone-elses-bucket"),
    ("generation", "1715678400000000"),
])
def test_data_that_contradicts_the_attributes_is_not_acted_on(field: str, value: str) -> None:
    envelope = load("pubsub_finalize.json")
    resource = data_of(envelope)
    resource[field] = value
    delivery = parse(with_data(envelope, resource))
    assert delivery.events.objects == ()
    assert f"data.{field} is {value!r}" in delivery.events.ignored[0]


@pytest.mark.parametrize("size", ["-1", "1e3", True, 1.5, "", [], "١٢"])
def test_nonsense_size_is_a_malformed_notification(size: object) -> None:
    envelope = load("pubsub_finalize.json")
    resource = data_of(envelope)
    resource["size"] = size
    delivery = parse(with_data(envelope, resource))
    assert delivery.events.objects == ()
    assert "size is not a byte count" in delivery.events.ignored[0]


def test_other_pubsub_messages_are_acknowledged_not_acted_on() -> None:
    envelope = load("pubsub_finalize.json")
    envelope["message"]["attributes"] = {"source": "billing-export"}
    delivery = parse(envelope)
    assert delivery.form == "pubsub" and delivery.events.objects == ()
    assert "not a Cloud Storage notification" in delivery.events.ignored[0]
    envelope["message"] = "not an object"
    assert "message is missing or not an object" in parse(envelope).events.ignored[0]


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "request body is not JSON"),
    (b"{", "request body is not JSON"),
    (b"\xff", "request body is not readable JSON"),
    (b"[" * 100000 + b"]" * 100000, "request body is not readable JSON"),
    (b"[1, 2]", "neither a Pub/Sub push envelope nor a CloudEvent (a JSON list)"),
    (b"{}", "(an empty object)"),
    (json.dumps(data_of(load("pubsub_finalize.json"))).encode(),
     "top-level fields: bucket, contentType, crc32c"),
])
def test_bodies_that_are_no_delivery_at_all_have_no_form(body: bytes, expected: str) -> None:
    delivery = parse(body)
    assert delivery.form is None and delivery.events.objects == ()
    assert expected in delivery.events.ignored[0]


def test_cloudevent_headers_are_case_insensitive() -> None:
    headers, body = request("cloudevent_gcs_finalized_binary.json")
    shouted = {name.upper(): value for name, value in headers.items()}
    assert parse_push_request(shouted, body).events.objects == (
        parse_push_request(headers, body).events.objects)


def test_binary_cloudevent_with_a_broken_body_is_acknowledged_with_a_reason() -> None:
    headers, _ = request("cloudevent_gcs_finalized_binary.json")
    delivery = parse_push_request(headers, b"not json")
    assert delivery.form == "cloudevent" and delivery.events.objects == ()
    assert delivery.events.ignored[0].startswith("CloudEvent 11020834875476422: body is not JSON")


def test_cloudevent_names_come_from_source_and_subject_and_must_agree_with_data() -> None:
    headers, body = request("cloudevent_gcs_finalized_binary.json")
    resource = json.loads(body)
    del resource["bucket"], resource["name"]
    (found,) = parse_push_request(headers, json.dumps(resource).encode()).events.objects
    assert (found.location, found.key) == (BUCKET, "inbox/photos/my holiday + friends.png")
    lying = dict(headers, **{"ce-subject": "objects/inbox/elsewhere.png"})
    delivery = parse_push_request(lying, body)
    assert delivery.events.objects == ()
    assert "data.name is 'inbox/photos/my holiday + friends.png'" in delivery.events.ignored[0]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(specversion="0.3"), "specversion '0.3' is not 1.x"),
    (lambda d: d.update(data="text"), "data is not an object resource"),
    (lambda d: (d.pop("data"), d.update(data_base64="e30=")), "data_base64 is not"),
    (lambda d: d["data"].update(generation=None), "data.generation is not a generation"),
])
def test_structured_cloudevents_that_cannot_be_used_are_skipped(change: Any,
                                                                expected: str) -> None:
    document = load("cloudevent_gcs_finalized_structured.json")
    change(document["body"])
    delivery = parse(document["body"], document["headers"])
    assert delivery.form == "cloudevent" and delivery.events.objects == ()
    assert expected in delivery.events.ignored[0]


def test_a_structured_cloudevent_is_recognised_without_its_media_type() -> None:
    document = load("cloudevent_gcs_finalized_structured.json")
    delivery = parse(document["body"], JSON_HEADERS)
    assert delivery.form == "cloudevent" and len(delivery.events.objects) == 1


def _mutations(value: Any, rng: random.Random) -> Any:
    """Replace one randomly chosen node of a JSON document with a value of another type."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        return {**value, key: _mutations(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return [*value[:index], _mutations(value[index], rng), *value[index + 1:]]
    return rng.choice([None, 0, -1, True, "", "x", [], {}, 1.5, "1715678497482103", "=="])


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_nothing_a_caller_sends_makes_the_parser_raise(name: str) -> None:
    rng = random.Random(name)
    headers, body = request(name)
    document = json.loads(body)
    for _ in range(300):
        delivery = parse_push_request(headers, json.dumps(_mutations(document, rng)).encode())
        assert len(delivery.events.objects) + len(delivery.events.ignored) >= 1


def test_nothing_inside_message_data_makes_the_parser_raise() -> None:
    rng = random.Random(7)
    envelope = load("pubsub_finalize.json")
    resource = data_of(envelope)
    for _ in range(300):
        delivery = parse(with_data(envelope, _mutations(resource, rng)))
        assert len(delivery.events.objects) + len(delivery.events.ignored) == 1
