"""Event Grid deliveries (Event Grid schema and CloudEvents 1.0) become the blobs a user uploaded.

The fixtures in tests/events/ follow the layout of Azure's documented samples; the variations
below change one field each, so every test shows one behaviour a user would notice: the right
account, container, blob name, version and size, and events that start nothing explained instead
of crashing the delivery.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from convbridge.events.event_grid import (
    parse_event_grid,
    split_blob_url,
    subscription_validation_code,
)
from convbridge.model import ObjectRef

EVENTS = Path(__file__).resolve().parents[1] / "events"
ACCOUNT = "convbridgeuploads"


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def ref(container: str, key: str, version: str | None, size: int | None) -> ObjectRef:
    return ObjectRef(storage="azure_blob", location=f"{ACCOUNT}/{container}", key=key,
                     version=version, size=size)


# What each fixture must amount to: the objects, and one text each skip reason must contain.
FIXTURES: dict[str, tuple[list[ObjectRef], list[str]]] = {
    "event_grid_blob_created.json": (
        [ref("uploads", "inbox/Quarterly report (final).docx", "0x8DC73F5A2B9C1D4", 48213)],
        [],
    ),
    "event_grid_batch.json": (
        [ref("uploads", "inbox/photos/my holiday + friends.png", "0x8DC73F5B9A0E2F1", 734003),
         # a Data Lake commit's size comes from the storage, not the event
         ref("lake", "inbox/scans/page 1.tiff", "0x8DC73F5C1A2B3C4", None)],
        ["Microsoft.Storage.BlobDeleted", "'CreateFile' does not commit"],
    ),
    "event_grid_subscription_validation.json": ([], ["SubscriptionValidationEvent"]),
    "cloudevents_blob_created.json": (
        [ref("uploads", "inbox/scans/résumé 2024.pdf", "0x8D76C39E4407333", 26214400)],
        [],
    ),
    "cloudevents_batch.json": (
        # a copy may still be running: its size, like an SFTP commit's, comes from the storage
        [ref("uploads", "inbox/invoices/2024-05 ACME #1042.pdf", "0x8DC7402A1B2C3D4", None),
         ref("uploads", "inbox/drop/report.png", "0x8DC7402B1C2D3E4", None)],
        ["'SftpCreate' does not commit", "Microsoft.Storage.BlobTierChanged"],
    ),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_parses_to_what_was_uploaded(name: str) -> None:
    objects, reasons = FIXTURES[name]
    parsed = parse_event_grid(load(name))
    assert list(parsed.objects) == objects
    assert len(parsed.ignored) == len(reasons)
    for reason, expected in zip(parsed.ignored, reasons, strict=True):
        assert expected in reason


def test_both_schemas_give_the_same_object_for_the_same_upload() -> None:
    cloud = load("cloudevents_blob_created.json")
    grid = {"topic": cloud["source"], "subject": cloud["subject"],
            "eventType": cloud["type"], "eventTime": cloud["time"], "id": cloud["id"],
            "data": cloud["data"], "dataVersion": "", "metadataVersion": "1"}
    assert parse_event_grid([grid]).objects == parse_event_grid(cloud).objects
    assert parse_event_grid([cloud]).objects == parse_event_grid(cloud).objects  # batched mode


def with_url(url: str) -> list[dict[str, Any]]:
    events = copy.deepcopy(load("event_grid_blob_created.json"))
    events[0]["data"]["url"] = url
    return events


@pytest.mark.parametrize(("path", "key"), [
    ("inbox/a%2520b.png", "inbox/a%20b.png"),      # decoded once, not twice
    ("inbox/a+b.png", "inbox/a+b.png"),            # "+" is a plus in a path, not a space
    ("inbox/%E2%9C%93 done.png", "inbox/✓ done.png"),
    ("inbox/what?.png", "inbox/what?.png"),        # an unencoded "?" is part of the name
    ("inbox/a/../b.png", "inbox/a/../b.png"),      # kept as is: the pipeline refuses it
])
def test_blob_names_are_percent_decoded_exactly_once(path: str, key: str) -> None:
    parsed = parse_event_grid(with_url(f"https://{ACCOUNT}.blob.core.windows.net/uploads/{path}"))
    assert [o.key for o in parsed.objects] == [key]


def test_emulator_urls_name_the_account_in_the_path() -> None:
    assert split_blob_url("http://127.0.0.1:10000/devstoreaccount1/c-1/inbox/x%20y.png") == (
        "devstoreaccount1", "c-1", "inbox/x y.png")
    assert split_blob_url("http://localhost:10000/devstoreaccount1/box/a.png",
                          "devstoreaccount1") == ("devstoreaccount1", "box", "a.png")
    # a custom domain in front of the account, told apart by the topic
    assert split_blob_url("https://files.example.com/acct1/box/a.png", "acct1") == (
        "acct1", "box", "a.png")


@pytest.mark.parametrize(("url", "reason"), [
    ("https://otheraccount.blob.core.windows.net/uploads/a.png", "comes from 'convbridgeuploads'"),
    ("ftp://convbridgeuploads.blob.core.windows.net/uploads/a.png", "not an http(s) URL"),
    ("https://convbridgeuploads.blob.core.windows.net/uploads/", "names no blob"),
    ("https://convbridgeuploads.blob.core.windows.net/uploads", "names no blob"),
    ("https://convbridgeuploads.blob.core.windows.net/Up_Loads/a.png", "no valid container"),
    ("https://convbridgeuploads.blob.core.windows.net/uploads/%FF.png", "not percent-encoded"),
    ("https://convbridgeuploads.blob.core.windows.net", "not an http(s) URL with a path"),
])
def test_urls_that_name_no_blob_of_the_account_are_skipped_with_a_reason(
        url: str, reason: str) -> None:
    parsed = parse_event_grid(with_url(url))
    assert parsed.objects == ()
    assert len(parsed.ignored) == 1 and reason in parsed.ignored[0]


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("contentLength", -1, "not a byte count"),
    ("contentLength", True, "not a byte count"),
    ("contentLength", "12", "not a byte count"),
    ("eTag", 7, "eTag is not a string"),
    ("url", None, "data.url is missing"),
    ("api", None, "data.api is missing"),
])
def test_mistyped_fields_are_skipped_naming_the_field(field: str, value: Any,
                                                      reason: str) -> None:
    events = load("event_grid_blob_created.json")
    events[0]["data"][field] = value
    parsed = parse_event_grid(events)
    assert parsed.objects == ()
    assert reason in parsed.ignored[0] and "831e1650" in parsed.ignored[0]


def test_an_event_without_an_etag_still_starts_a_job_and_the_storage_supplies_the_version(
) -> None:
    events = load("event_grid_blob_created.json")
    del events[0]["data"]["eTag"]
    (found,) = parse_event_grid(events).objects
    assert found.version is None and found.key == "inbox/Quarterly report (final).docx"


@pytest.mark.parametrize("payload", [
    None, 3, "text", [], [None], [[]], {}, {"data": {}}, {"eventType": 5},
    {"specversion": "1.0", "type": "Microsoft.Storage.BlobCreated", "data": "x"},
    [{"eventType": "Microsoft.Storage.BlobCreated", "data": {"api": "PutBlob", "url": 3}}],
])
def test_malformed_deliveries_never_raise(payload: Any) -> None:
    parsed = parse_event_grid(payload)
    assert parsed.objects == ()
    assert parsed.ignored


def test_one_bad_event_does_not_hide_the_good_ones() -> None:
    events = load("event_grid_batch.json")
    events.insert(0, "garbage")
    parsed = parse_event_grid(events)
    assert len(parsed.objects) == 2
    assert "events[0]: not a JSON object" in parsed.ignored[0]


def test_the_subscription_validation_code_is_found_only_in_validation_events() -> None:
    assert subscription_validation_code(load("event_grid_subscription_validation.json")) == (
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6")
    assert subscription_validation_code(load("event_grid_blob_created.json")) is None
    assert subscription_validation_code(load("cloudevents_blob_created.json")) is None
    assert subscription_validation_code([{"eventType": "Microsoft.EventGrid."
                                          "SubscriptionValidationEvent", "data": {}}]) is None
    assert subscription_validation_code("[]") is None


def test_the_parser_imports_nothing_but_the_standard_library() -> None:
    code = ("import sys; import convbridge.events.event_grid; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'azure', 'boto3', 'botocore', 'httpx', 'aws_lambda_powertools'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
