"""S3 trigger payloads (notifications, EventBridge, SQS, SNS) become the objects a user uploaded.

The fixtures in tests/events/ follow the field layout AWS sends; the variations below change one
field of a fixture so each test shows one behaviour a user would notice: the right key, version
and size, and skipped records explained instead of crashing the batch.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from convbridge.events import ParsedEvents
from convbridge.events.s3 import parse_s3_event, parse_sqs_body
from convbridge.model import ObjectRef

EVENTS = Path(__file__).resolve().parents[1] / "events"
BUCKET = "convbridge-uploads"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return data


def ref(key: str, version: str | None, size: int | None) -> ObjectRef:
    return ObjectRef(storage="s3", location=BUCKET, key=key, version=version, size=size)


# What each fixture must amount to: the objects, and one text each skip reason must contain.
FIXTURES: dict[str, tuple[list[ObjectRef], list[str]]] = {
    "s3_put.json": (
        [ref("inbox/Quarterly report (final).docx", "9b2cf535f27731c974343645a3985328", 48213)],
        [],
    ),
    "s3_put_versioned.json": (
        [ref("inbox/scans/résumé 2024.pdf", "096fKKXTRTtl3on89fVO.nfljtsv6qko", 26214400)],
        [],
    ),
    "s3_delete.json": (
        [],
        ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"],
    ),
    "eventbridge_object_created.json": (
        [ref("inbox/invoices/2024-05 ACME #1042.pdf", "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", 183920)],
        [],
    ),
    "eventbridge_object_deleted.json": ([], ["'Object Deleted'"]),
    "sqs_s3_put.json": (
        [ref("inbox/photos/my holiday + friends.png", "5d41402abc4b2a76b9719d911017c592", 734003)],
        [],
    ),
    "sqs_eventbridge.json": (
        [ref("inbox/invoices/2024-05 ACME #1042.pdf", "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", 183920)],
        [],
    ),
    "sqs_sns_s3.json": (
        [ref("inbox/a/b/c.png", "e2fc714c4727ee9395f324cd2e7f331f", 20480)],
        [],
    ),
    "sns_s3_put.json": (
        [ref("inbox/forms/signup form.pdf", "c4ca4238a0b923820dcc509a6f75849b", 9120)],
        [],
    ),
    "sqs_s3_test_event.json": ([], ["s3:TestEvent"]),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_parses_to_what_was_uploaded(name: str) -> None:
    objects, reasons = FIXTURES[name]

    parsed = parse_s3_event(load(name))

    assert list(parsed.objects) == objects
    assert len(parsed.ignored) == len(reasons)
    for reason, expected in zip(parsed.ignored, reasons, strict=True):
        assert expected in reason


@pytest.mark.parametrize("name", sorted(n for n in FIXTURES if n.startswith("sqs_")))
def test_one_sqs_body_parses_like_the_whole_sqs_event(name: str) -> None:
    # The S3 trigger hands SQS records to parse_sqs_body one at a time (batch processor).
    event = load(name)
    (record,) = event["Records"]

    one = parse_sqs_body(record["body"])

    assert one.objects == parse_s3_event(event).objects
    assert len(one.ignored) == len(FIXTURES[name][1])


# --- keys -------------------------------------------------------------------------------------

# Raw key as it appears in the payload -> the key the user uploaded.
KEYS = [
    pytest.param("my+file.png", "my file.png", id="plus-is-space"),
    pytest.param("a%2Bb.png", "a+b.png", id="literal-plus"),
    pytest.param("100%25.png", "100%.png", id="percent"),
    pytest.param("r%C3%A9sum%C3%A9.png", "résumé.png", id="unicode-nfc"),
    pytest.param("re%CC%81sume%CC%81.png", "re\u0301sume\u0301.png", id="unicode-nfd-kept"),
    pytest.param("inbox/a/b/c.png", "inbox/a/b/c.png", id="nested-prefixes"),
    pytest.param("%2525", "%25", id="decoded-exactly-once"),
    pytest.param("/rooted.png", "/rooted.png", id="leading-slash-kept"),
    pytest.param("../../etc/passwd", "../../etc/passwd", id="dot-dot-kept"),
    pytest.param("+padded+", " padded ", id="edge-spaces-kept"),
    pytest.param("%E6%97%A5%E6%9C%AC/%E5%A0%B1%E5%91%8A.pdf", "日本/報告.pdf", id="cjk"),
]


def s3_notification(raw_key: str, **object_fields: Any) -> dict[str, Any]:
    """The s3_put.json notification with its key (and optionally other object fields) replaced;
    a field set to None is removed."""
    event = load("s3_put.json")
    obj = event["Records"][0]["s3"]["object"]
    obj["key"] = raw_key
    for name, value in object_fields.items():
        if value is None:
            obj.pop(name, None)
        else:
            obj[name] = value
    return event


def eventbridge(raw_key: str, **object_fields: Any) -> dict[str, Any]:
    event = load("eventbridge_object_created.json")
    obj = event["detail"]["object"]
    obj["key"] = raw_key
    for name, value in object_fields.items():
        if value is None:
            obj.pop(name, None)
        else:
            obj[name] = value
    return event


def in_sqs(*bodies: dict[str, Any] | str) -> dict[str, Any]:
    """An SQS event with one record per body, built on sqs_s3_put.json's record layout."""
    template = load("sqs_s3_put.json")["Records"][0]
    records = []
    for index, body in enumerate(bodies):
        record = copy.deepcopy(template)
        record["messageId"] = f"msg-{index}"
        record["body"] = body if isinstance(body, str) else json.dumps(body)
        records.append(record)
    return {"Records": records}


CARRIERS: list[Any] = [
    pytest.param(lambda raw: parse_s3_event(s3_notification(raw)), id="notification"),
    pytest.param(lambda raw: parse_s3_event(eventbridge(raw)), id="eventbridge"),
    pytest.param(lambda raw: parse_s3_event(in_sqs(s3_notification(raw))), id="sqs"),
    pytest.param(lambda raw: parse_sqs_body(json.dumps(eventbridge(raw))), id="sqs-body-eb"),
]


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(("raw", "expected"), KEYS)
def test_key_is_exactly_what_the_user_uploaded(
    carrier: Callable[[str], ParsedEvents], raw: str, expected: str
) -> None:
    parsed = carrier(raw)

    assert parsed.ignored == ()
    assert [o.key for o in parsed.objects] == [expected]


def test_nfd_key_is_not_normalised_to_nfc() -> None:
    # macOS uploads often carry decomposed accents; normalising would name a different object.
    (obj,) = parse_s3_event(s3_notification("re%CC%81sume%CC%81.png")).objects

    assert unicodedata.is_normalized("NFD", obj.key)
    assert obj.key != unicodedata.normalize("NFC", obj.key)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(s3_notification("bad%FF.png"), id="notification"),
        pytest.param(eventbridge("bad%FF.png"), id="eventbridge"),
    ],
)
def test_key_that_is_not_utf8_is_skipped_not_guessed(event: dict[str, Any]) -> None:
    parsed = parse_s3_event(event)

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert "bad%FF.png" in reason


# --- version and size -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "version"),
    [
        pytest.param(
            {"versionId": "3HL4kqtJvjVBH40Nrjfkd", "eTag": "abc"},
            "3HL4kqtJvjVBH40Nrjfkd",
            id="versionId-wins",
        ),
        pytest.param({"versionId": None, "eTag": "abc123"}, "abc123", id="etag-when-unversioned"),
        pytest.param({"versionId": None, "eTag": '"abc123"'}, "abc123", id="etag-unquoted"),
        pytest.param({"versionId": None, "eTag": "d8e8fca2-4"}, "d8e8fca2-4", id="multipart-etag"),
        pytest.param(
            {"versionId": "null", "eTag": "abc123"},
            "abc123",
            id="suspended-versioning-null-falls-back",
        ),
        pytest.param({"versionId": None, "eTag": None}, None, id="neither"),
    ],
)
def test_version_from_version_id_else_etag(fields: dict[str, Any], version: str | None) -> None:
    for event in (s3_notification("k.png", **fields), _as_eventbridge_fields("k.png", fields)):
        (obj,) = parse_s3_event(event).objects
        assert obj.version == version


def _as_eventbridge_fields(raw_key: str, fields: dict[str, Any]) -> dict[str, Any]:
    names = {"versionId": "version-id", "eTag": "etag"}
    return eventbridge(raw_key, **{names[name]: value for name, value in fields.items()})


def test_two_uploads_of_one_key_are_distinct_objects() -> None:
    # The claim key includes the version: a re-upload must not look like a duplicate delivery.
    first = parse_s3_event(s3_notification("inbox/a.png", eTag="111")).objects
    second = parse_s3_event(s3_notification("inbox/a.png", eTag="222")).objects

    assert first != second


def test_size_is_read_and_absent_size_is_none() -> None:
    (sized,) = parse_s3_event(s3_notification("k.png", size=0)).objects
    (unsized,) = parse_s3_event(s3_notification("k.png", size=None)).objects

    assert sized.size == 0
    assert unsized.size is None


@pytest.mark.parametrize("size", ["1024", -1, True, 1.5])
def test_nonsense_size_is_a_malformed_record(size: object) -> None:
    parsed = parse_s3_event(s3_notification("k.png", size=size))

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert "s3.object.size" in reason


# --- batches with bad records ------------------------------------------------------------------


def test_sqs_batch_mixing_good_malformed_and_test_event_records() -> None:
    good_put = s3_notification("inbox/one.png")
    no_key = s3_notification("x")
    del no_key["Records"][0]["s3"]["object"]["key"]
    test_event = json.loads(load("sqs_s3_test_event.json")["Records"][0]["body"])
    event = in_sqs(
        good_put,  # msg-0
        "this is not JSON {",  # msg-1
        test_event,  # msg-2
        no_key,  # msg-3
        load("s3_delete.json"),  # msg-4: two deletes
        eventbridge("inbox/two+%2B+three.png"),  # msg-5
        json.dumps([1, 2, 3]),  # msg-6: JSON, but not an object
    )
    event["Records"].append({"eventSource": "aws:sqs", "messageId": "msg-7", "body": None})

    parsed = parse_s3_event(event)

    assert [o.key for o in parsed.objects] == ["inbox/one.png", "inbox/two + three.png"]
    ignored = {reason.split(": ", 1)[0].split("/")[0]: reason for reason in parsed.ignored}
    assert len(parsed.ignored) == 7
    assert "not JSON" in ignored["Records[1] (SQS message msg-1)"]
    assert "s3:TestEvent" in ignored["Records[2] (SQS message msg-2)"]
    assert "s3.object.key is missing" in ignored["Records[3] (SQS message msg-3)"]
    assert sum("ObjectRemoved" in r for r in parsed.ignored) == 2
    assert "not a JSON object" in ignored["Records[6] (SQS message msg-6)"]
    assert "body is not a string" in ignored["Records[7] (SQS message msg-7)"]


def test_one_notification_with_several_records_keeps_order_and_skips_only_the_bad_one() -> None:
    event = s3_notification("first.png")
    second = copy.deepcopy(event["Records"][0])
    second["s3"]["object"]["key"] = "second.png"
    broken = copy.deepcopy(event["Records"][0])
    broken["s3"]["bucket"] = "not-an-object"
    event["Records"] += [broken, second]

    parsed = parse_s3_event(event)

    assert [o.key for o in parsed.objects] == ["first.png", "second.png"]
    (reason,) = parsed.ignored
    assert reason.startswith("Records[1]: malformed S3 record: s3.bucket.name")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("", "not JSON", id="empty"),
        pytest.param("[" * 100_000 + "]" * 100_000, "JSON", id="absurdly-nested"),
        pytest.param("{}", "not an S3 event", id="empty-object"),
        pytest.param('{"hello": "world"}', "hello", id="unknown-shape"),
        pytest.param(json.dumps({"Records": "nope"}), "Records is not a list", id="records-str"),
    ],
)
def test_unreadable_sqs_bodies_are_skipped_with_a_reason(body: str, expected: str) -> None:
    parsed = parse_sqs_body(body)

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert expected in reason


def test_sns_test_event_inside_sqs_is_skipped() -> None:
    envelope = json.loads(load("sqs_sns_s3.json")["Records"][0]["body"])
    envelope["Message"] = load("sqs_s3_test_event.json")["Records"][0]["body"]

    parsed = parse_sqs_body(json.dumps(envelope))

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert "s3:TestEvent" in reason


def test_sns_envelope_with_broken_message_is_skipped() -> None:
    envelope = json.loads(load("sqs_sns_s3.json")["Records"][0]["body"])
    envelope["Message"] = "{truncated"

    (reason,) = parse_sqs_body(json.dumps(envelope)).ignored

    assert reason.startswith("SQS message body/Message: not JSON")


def test_envelopes_nested_beyond_what_aws_sends_are_skipped() -> None:
    sqs_in_sqs = in_sqs(load("sqs_s3_put.json"))

    parsed = parse_s3_event(sqs_in_sqs)

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert "aws:sqs record nested" in reason


# --- EventBridge and other event kinds ---------------------------------------------------------


@pytest.mark.parametrize(
    "detail_type",
    [
        "Object Deleted",
        "Object Restore Completed",
        "Object Tags Added",
        "AWS API Call via CloudTrail",
    ],
)
def test_eventbridge_events_other_than_object_created_are_skipped(detail_type: str) -> None:
    event = load("eventbridge_object_created.json")
    event["detail-type"] = detail_type

    parsed = parse_s3_event(event)

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert detail_type in reason
    assert event["id"] in reason


def test_eventbridge_without_a_key_names_the_missing_field() -> None:
    event = load("eventbridge_object_created.json")
    del event["detail"]["object"]["key"]

    (reason,) = parse_s3_event(event).ignored

    assert "detail.object.key is missing" in reason


def test_eventbridge_event_from_another_service_is_not_an_s3_event() -> None:
    event = load("eventbridge_object_created.json")
    event["source"] = "aws.ec2"
    event["detail-type"] = "EC2 Instance State-change Notification"

    parsed = parse_s3_event(event)

    assert parsed.objects == ()
    assert "aws.ec2" in parsed.ignored[0]


def test_deletes_are_skipped_and_name_the_object() -> None:
    parsed = parse_s3_event(load("s3_delete.json"))

    assert parsed.objects == ()
    assert parsed.ignored[0] == (
        "Records[0]: ObjectRemoved:Delete is not an object creation"
        " (s3://convbridge-uploads/inbox/old draft.docx)"
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param({"Records": [{"eventSource": "aws:dynamodb"}]}, "aws:dynamodb", id="dynamodb"),
        pytest.param({"Records": ["x"]}, "not a JSON object", id="record-str"),
        pytest.param({"Records": None}, "Records is not a list", id="records-null"),
        pytest.param({}, "not an S3 event", id="empty"),
    ],
)
def test_events_that_are_not_s3_uploads_are_skipped(event: dict[str, Any], expected: str) -> None:
    parsed = parse_s3_event(event)

    assert parsed.objects == ()
    (reason,) = parsed.ignored
    assert expected in reason


def test_event_that_is_not_a_mapping_is_skipped_not_raised() -> None:
    parsed = parse_s3_event([1, 2])  # type: ignore[arg-type]

    assert parsed.ignored == ("event: not a JSON object but list",)


def test_incompatible_notification_version_is_skipped() -> None:
    event = s3_notification("k.png")
    event["Records"][0]["eventVersion"] = "3.0"

    parsed = parse_s3_event(event)

    assert parsed.objects == ()
    assert "eventVersion '3.0'" in parsed.ignored[0]


# --- the result type and cold start ------------------------------------------------------------


def test_parsed_events_combine_in_order() -> None:
    a, b = ref("a", None, None), ref("b", None, None)

    combined = ParsedEvents.of(a) + ParsedEvents.skip("why") + ParsedEvents.of(b)

    assert combined == ParsedEvents(objects=(a, b), ignored=("why",))


def test_importing_the_s3_parser_loads_no_sdk() -> None:
    # The trigger's cold start must not pay for powertools, boto3 or the other clouds' parsers.
    code = (
        "import sys, convbridge.events.s3; "
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'aws_lambda_powertools', 'boto3', 'botocore', 'azure', 'google'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# --- nothing in a payload makes the parser raise -------------------------------------------------

BAD_VALUES: list[Any] = [None, 0, -1, True, "", "%FF", [], {}, [{}], "{"]


def _mutations(node: Any) -> Any:
    """Yield copies of a JSON document with one value replaced by each of BAD_VALUES, also inside
    the JSON strings that SQS bodies and SNS messages carry."""
    if isinstance(node, dict):
        for name, value in node.items():
            for bad in BAD_VALUES:
                yield {**node, name: bad}
            for changed in _mutations(value):
                yield {**node, name: changed}
    elif isinstance(node, list):
        for index, value in enumerate(node):
            for changed in _mutations(value):
                yield [*node[:index], changed, *node[index + 1 :]]
    elif isinstance(node, str) and node.startswith("{"):
        for changed in _mutations(json.loads(node)):
            yield json.dumps(changed)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_no_single_broken_field_makes_parsing_raise(name: str) -> None:
    count = 0
    for event in _mutations(load(name)):
        parsed = parse_s3_event(event)
        count += 1
        # Every record is accounted for: an object, or a reason why not.
        assert parsed.objects or parsed.ignored
    assert count > 50
