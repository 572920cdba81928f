"""CloudConvert v2 over real HTTP (moto, the sandbox, the bridge's handlers) where the real
service differs from what the bridge once assumed: a paged input exports several files, which
``export/s3`` names by a ``key_prefix`` (or ``%d`` in ``key``), never by one fixed key; and
the documented webhook is the account's, made in the dashboard with its own signing secret,
which also hears jobs the bridge did not make."""

from __future__ import annotations

import io
import secrets

import httpx
from PIL import Image

from devstack.stack import DevStack
from tests.conftest import png_bytes

PAGED_RULES = """\
version: 1
rules:
  - name: scans-to-png
    match: {storage: s3, location: %(location)s, prefix: inbox/, suffixes: [.tif]}
    convert: {to: png}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
"""


def tiff_pages(count: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A TIFF of ``count`` pages, each a different colour."""
    pages = [Image.new("RGB", size, (60 * n % 256, 90, 200)) for n in range(count)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def paged_stack() -> DevStack:
    return DevStack(rules_text=PAGED_RULES % {"location": "convbridge-demo"})


def convert(stack: DevStack, key: str, body: bytes) -> dict:
    stack.upload(key, body)
    summary = stack.trigger(stack.s3_event(key))
    stack.wait()
    assert summary["counts"] == {"submitted": 1}
    return summary


def test_a_three_page_scan_exports_three_pngs_into_the_output_folder() -> None:
    with paged_stack() as stack:
        convert(stack, "inbox/scan.tif", tiff_pages(3))
        record = stack.read_json("results/scan.tif.json")
        outputs = {key: stack.harness.read_bytes(key) for key in stack.objects("outbox/")}
    assert record is not None and record["status"] == "finished", record
    assert record["route"] == "native"
    folder = "outbox/scan.tif.png/"
    expected = [f"{folder}scan-{n}.png" for n in (1, 2, 3)]
    assert [o["key"] for o in record["outputs"]] == expected
    assert sorted(outputs) == expected
    for key in expected:
        body = outputs[key]
        assert body is not None and body.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(body)).size == (40, 30)
    assert len(set(outputs.values())) == 3  # each page its own image


def test_a_one_page_scan_exports_one_png_at_the_output_key() -> None:
    with paged_stack() as stack:
        convert(stack, "inbox/single.tif", tiff_pages(1))
        record = stack.read_json("results/single.tif.json")
        outputs = stack.objects("outbox/")
    assert record is not None and record["status"] == "finished", record
    assert [o["key"] for o in record["outputs"]] == ["outbox/single.tif.png"]
    assert list(outputs) == ["outbox/single.tif.png"]
    assert record["outputs"][0]["size"] == outputs["outbox/single.tif.png"] > 0


# -- the account webhook made in CloudConvert's dashboard ----------------------------------------


def account_webhook_stack() -> DevStack:
    """CloudConvert signs a job's own webhook_url with a secret it does not document; the
    dashboard's webhook (job.finished, job.failed) has a signing secret of its own, which is
    the one the user copies into CONVBRIDGE_SECRET_CLOUDCONVERT's signing_secret."""
    stack = DevStack()
    stack.sandbox.set_cloudconvert_job_signing_secret(secrets.token_urlsafe(32))
    return stack


def register_account_webhook(stack: DevStack) -> str:
    assert stack.webhook is not None
    url = f"{stack.webhook.url}/callbacks/cloudconvert"
    stack.sandbox.set_cloudconvert_webhook(url, stack.signing_secret)
    return url


def test_the_dashboard_webhook_settles_each_job_once() -> None:
    with account_webhook_stack() as stack:
        url = register_account_webhook(stack)
        convert(stack, "inbox/a.png", png_bytes())
        stack.upload("inbox/broken.png", b"\x89PNG\r\n\x1a\nnot an image at all")
        stack.trigger(stack.s3_event("inbox/broken.png"))
        stack.wait()
        record = stack.read_json("results/a.png.json")
        failure = stack.read_json("failures/broken.png.json")
        deliveries = stack.sandbox.deliveries()
    assert record is not None and record["status"] == "finished", record
    assert failure is not None and failure["error"]["code"] == "CONVERSION_FAILED"
    # both reach the one callback route: the dashboard's is accepted (202, queued), the job's
    # own, signed with a secret the user never saw, is refused (401) and not retried
    assert all(d["url"] == url for d in deliveries)
    answered = sorted((d["event"], d["status"]) for d in deliveries)
    assert answered == [("job.failed", 202), ("job.failed", 401),
                        ("job.finished", 202), ("job.finished", 401)]


def test_only_the_dashboard_webhooks_secret_is_accepted() -> None:
    """The deployment holds the dashboard webhook's signing secret; the same job's callback
    signed with the API key instead (a verifier keyed on the wrong secret would take it) is
    refused, and the dashboard's settles the job."""
    with DevStack() as stack:
        assert stack.webhook is not None
        stack.sandbox.set_cloudconvert_job_signing_secret(stack.api_key)
        # the same route; the query only tells the two deliveries apart in the sandbox's log
        dashboard = f"{stack.webhook.url}/callbacks/cloudconvert?made=dashboard"
        stack.sandbox.set_cloudconvert_webhook(dashboard, stack.signing_secret)
        convert(stack, "inbox/signed.png", png_bytes())
        record = stack.read_json("results/signed.png.json")
        answered = {d["url"].endswith("?made=dashboard"): d["status"]
                    for d in stack.sandbox.deliveries()}
    assert record is not None and record["status"] == "finished", record
    # dashboard's (its own secret) accepted; the job's own (the API key) refused
    assert answered == {True: 202, False: 401}


def test_the_dashboard_webhook_answers_jobs_the_bridge_did_not_make_without_being_disabled(
        ) -> None:
    """An account webhook hears every job of the account: another application's job is
    refused with a 4xx CloudConvert does not retry, never 410 (which disables the webhook)
    nor a 5xx (which it retries)."""
    with account_webhook_stack() as stack:
        url = register_account_webhook(stack)
        for tag in (None, "another-application", "x" * 300):
            document: dict = {"tasks": {"make": {"operation": "import/url",
                                                 "url": "http://127.0.0.1:9/never.png"}}}
            if tag is not None:
                document["tag"] = tag
            answer = httpx.post(f"{stack.sandbox.url}/v2/jobs", json=document,
                                headers={"Authorization": f"Bearer {stack.api_key}"})
            assert answer.status_code == 201, answer.text
        stack.wait()
        statuses = [d["status"] for d in stack.sandbox.deliveries() if d["url"] == url]
        written = stack.objects("results/") | stack.objects("failures/")
    assert len(statuses) == 3, statuses
    assert all(status is not None and 400 <= status < 500 and status != 410
               for status in statuses), statuses
    assert written == {}


def test_a_per_job_webhook_url_keeps_working_with_the_signing_secret() -> None:
    with DevStack() as stack:
        convert(stack, "inbox/b.png", png_bytes())
        record = stack.read_json("results/b.png.json")
        [delivery] = stack.sandbox.deliveries()
    assert record is not None and record["status"] == "finished"
    assert delivery["status"] == 202 and delivery["url"].endswith("/callbacks/cloudconvert")


def test_a_new_version_of_a_one_page_scan_replaces_its_output() -> None:
    with paged_stack() as stack:
        convert(stack, "inbox/again.tif", tiff_pages(1))
        first = stack.harness.read_bytes("outbox/again.tif.png")
        convert(stack, "inbox/again.tif", tiff_pages(1, size=(80, 60)))
        record = stack.read_json("results/again.tif.json")
        second = stack.harness.read_bytes("outbox/again.tif.png")
        left = stack.objects("outbox/")
    assert record is not None and record["status"] == "finished", record
    assert first is not None and second is not None and first != second
    assert Image.open(io.BytesIO(second)).size == (80, 60)
    assert list(left) == ["outbox/again.tif.png"]
    assert record["outputs"][0]["size"] == len(second)
