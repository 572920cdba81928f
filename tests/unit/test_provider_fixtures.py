"""Every provider's documented callback and status bodies parse into the same JobOutcome shape
as CloudConvert v2's: the pipeline settles any provider without knowing which it is."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from convbridge.model import JobOutcome
from convbridge.providers.base import parse_size
from convbridge.providers.cloudconvert import CloudConvert
from convbridge.providers.cloudconvert_v1 import CloudConvertV1
from convbridge.providers.freeconvert import FreeConvert
from convbridge.providers.onlineconvert import parse_job

FIXTURES = Path(__file__).parent.parent / "fixtures"


def read(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def client(cls: type[Any], base_url: str) -> Any:
    return cls(api_key="k", signing_secret="s", base_url=base_url, http=httpx.Client())


def cloudconvert(name: str) -> JobOutcome | None:
    return client(CloudConvert, "https://api.cloudconvert.com/v2").parse_callback(read(name))


def freeconvert(name: str) -> JobOutcome | None:
    return client(FreeConvert, "https://api.freeconvert.com/v1").parse_callback(read(name))


def onlineconvert(name: str) -> JobOutcome | None:
    return parse_job(json.loads(read(name)))


def cloudconvert_v1(name: str, status: int) -> JobOutcome | None:
    provider = client(CloudConvertV1, "https://api.cloudconvert.com/v1")
    return provider.parse_process(json.loads(read(name)), http_status=status)


def freeconvert_body(document: dict[str, Any]) -> JobOutcome | None:
    provider = client(FreeConvert, "https://api.freeconvert.com/v1")
    outcome: JobOutcome | None = provider.parse_callback(json.dumps(document).encode())
    return outcome


def shape(outcome: JobOutcome | None) -> dict[str, Any]:
    """What the pipeline relies on, provider-independent."""
    assert outcome is not None
    return {
        "status": outcome.status,
        "has_job_id": bool(outcome.job_id),
        "context_token": outcome.context_token,
        "outputs": [(bool(o.filename), bool(o.url and o.url.startswith("https://")))
                    for o in outcome.outputs],
        "failure": (bool(outcome.failed_task), bool(outcome.code), bool(outcome.message)),
        "ended_at": isinstance(outcome.ended_at, datetime),
    }


FINISHED = [
    lambda: freeconvert("freeconvert/webhook_job_success.json"),
    lambda: onlineconvert("onlineconvert/callback_job_completed.json"),
    lambda: cloudconvert_v1("cloudconvert_v1/process_finished.json", 200),
]
FAILED = [
    lambda: freeconvert("freeconvert/webhook_job_failed.json"),
    lambda: onlineconvert("onlineconvert/callback_job_failed.json"),
    lambda: cloudconvert_v1("cloudconvert_v1/process_error.json", 422),
]


@pytest.mark.parametrize("parse", FINISHED, ids=["freeconvert", "onlineconvert",
                                                 "cloudconvert_v1"])
def test_finished_bodies_have_cloudconverts_shape(parse: Any) -> None:
    expected = shape(cloudconvert("cloudconvert/webhook_job_finished.json"))
    assert shape(parse()) == expected
    assert expected["outputs"] == [(True, True)] and expected["failure"] == (False,) * 3


@pytest.mark.parametrize("parse", FAILED, ids=["freeconvert", "onlineconvert",
                                               "cloudconvert_v1"])
def test_failed_bodies_have_cloudconverts_shape(parse: Any) -> None:
    expected = shape(cloudconvert("cloudconvert/webhook_job_failed.json"))
    assert shape(parse()) == expected
    assert expected["outputs"] == [] and expected["failure"] == (True,) * 3


def test_each_provider_reports_its_own_error_fields() -> None:
    failed = [parse() for parse in FAILED]
    assert [(o.failed_task, o.code, o.message) for o in failed if o] == [
        ("convert", "CONVERSION_FAILED", "The input file is not a valid PNG image"),
        ("conversion", "5016", "The input file is not a valid PNG image"),
        ("convert", "422", "The input file is not a valid PNG image"),
    ]


def test_finished_outputs_name_the_file_the_provider_made() -> None:
    names = [[(o.filename, o.size) for o in parse().outputs] for parse in FINISHED]
    assert names == [[("sunset beach.pdf", None)], [("sunset beach.pdf", 24213)],
                     [("sunset beach.pdf", 24213)]]


def test_jobs_still_running_are_no_outcome() -> None:
    assert onlineconvert("onlineconvert/job_processing.json") is None
    created = json.loads(read("freeconvert/job_created.json"))
    assert freeconvert_body({"event": "job.created", "job": created}) is None


def test_a_v1_process_with_several_files_lists_each_file_url() -> None:
    outcome = cloudconvert_v1("cloudconvert_v1/process_multiple_outputs.json", 200)
    assert outcome is not None
    assert [(o.filename, o.url) for o in outcome.outputs] == [
        ("multiple_pages-1.jpg",
         "https://srv01.cloudconvert.com/download/~us2tvnBpfE/multiple_pages-1.jpg"),
        ("multiple_pages-2.jpg",
         "https://srv01.cloudconvert.com/download/~us2tvnBpfE/multiple_pages-2.jpg"),
    ]


@pytest.mark.parametrize(("reported", "size"), [
    (10, 10), ("2048", 2048), (True, None), (None, None), ("ten", None), (float("inf"), None),
])
def test_an_output_size_is_read_alike_in_every_dialect(reported: object, size: int | None
                                                       ) -> None:
    assert parse_size(reported) == size
