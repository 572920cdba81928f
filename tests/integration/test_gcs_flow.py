"""The GCS -> CloudConvert v2 -> GCS flow over real HTTP: fake-gcs-server, the sandbox, moto (for
Secrets Manager, DynamoDB, SQS), and the real GCS trigger and webhook handlers behind local
Function URLs, with Pub/Sub's part played by signed push requests.

fake-gcs-server verifies neither V4 signatures nor preconditions on resumable uploads, so the
signed URL's scope is proven by recomputing its V4 signature, and the write path checks the
generation itself before it publishes (GCS checks it again server-side).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.oauth2 import service_account

from convbridge.errors import (
    ConfigError,
    GrantError,
    OutputCollision,
    SecretError,
    StaleWrite,
    StorageError,
)
from convbridge.http import HostPattern
from convbridge.model import (
    OUTPUT_MARKER,
    SOURCE_TAG,
    ObjectRef,
    OutputFile,
    OutputTarget,
    source_tag,
)
from convbridge.pipeline import RelayPolicy, relay_output
from convbridge.rules import DEFAULT_MAX_OUTPUT
from convbridge.secrets import SecretValue
from convbridge.storage.gcs import GcsStorage, storage_client
from convbridge.storage.gcs_identity import signing_credentials
from devstack.harness.gcs import (
    SECRET_NAME,
    GcsHarness,
    pubsub_push_envelope,
    service_account_key,
)
from devstack.servers import RELAY_EXTRA_HOSTS, ServerStartError
from devstack.servers_gcs import FakeGcsServer
from devstack.stack import DevStack
from tests.conditional_writes import check_conditional_record_writes
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
READ_GRANT_SECONDS = 600
LOOPBACK = RelayPolicy((HostPattern.parse(RELAY_EXTRA_HOSTS),), max_bytes=DEFAULT_MAX_OUTPUT)


@pytest.fixture
def stack() -> Iterator[DevStack]:
    env = {"CONVBRIDGE_READ_GRANT_SECONDS": str(READ_GRANT_SECONDS)}
    with DevStack(storage="gcs", env=env) as running:
        yield running


def harness(stack: DevStack) -> GcsHarness:
    assert isinstance(stack.harness, GcsHarness)
    return stack.harness


def push(stack: DevStack, envelope: dict[str, Any] | bytes, *, token: str | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return harness(stack).push(stack, envelope, token=token, headers=headers)


def run(stack: DevStack, key: str) -> dict[str, Any]:
    summary = stack.trigger(stack.event_for(key))
    stack.wait()
    return summary


def test_upload_becomes_a_pdf_relayed_into_the_bucket(stack: DevStack) -> None:
    stack.upload("inbox/a/my photo+1.png", png_bytes())
    summary = run(stack, "inbox/a/my photo+1.png")
    assert summary["http_status"] == 200 and summary["counts"] == {"submitted": 1}
    record = stack.read_json("results/a/my photo+1.png.json")
    assert record is not None
    assert record["status"] == "finished" and record["route"] == "relay"
    assert record["job_id"] == summary["objects"][0]["job_id"]
    assert record["outputs"][0]["key"] == "outbox/a/my photo+1.png.pdf"
    blob = harness(stack).client.bucket(stack.bucket).get_blob("outbox/a/my photo+1.png.pdf")
    assert blob.metadata == {OUTPUT_MARKER: "images-to-pdf",
                             SOURCE_TAG: source_tag(stack.bucket, "inbox/a/my photo+1.png")}
    assert record["outputs"][0]["size"] == blob.size > 0
    assert blob.download_as_bytes().startswith(b"%PDF")
    assert stack.read_json("failures/a/my photo+1.png.json") is None
    (job,) = stack.sandbox.jobs()
    tasks = {t["operation"]: t for t in job["tasks"]}
    assert set(tasks) == {"import/url", "convert", "export/url"}
    assert tasks["import/url"]["payload"]["filename"] == "my photo+1.png"
    assert "X-Goog-Signature=" in tasks["import/url"]["payload"]["url"]


def test_corrupt_input_gets_a_failure_report_with_the_providers_code(stack: DevStack) -> None:
    stack.upload("inbox/broken.png", b"\x89PNG\r\n\x1a\nnot an image at all")
    run(stack, "inbox/broken.png")
    report = stack.read_json("failures/broken.png.json")
    assert report is not None
    assert report["status"] == "failed" and report["provider"] == "cloudconvert"
    assert report["error"]["task"] == "convert" and report["error"]["code"] == "CONVERSION_FAILED"
    assert report["job_id"]
    assert stack.read_json("results/broken.png.json")["status"] == "failed"  # type: ignore[index]
    assert stack.objects("outbox/") == {}


# ----------------------------------------------------------------------- the signed URL


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(pairs))


def string_to_sign(method: str, path: str, host: str, query: dict[str, str]) -> bytes:
    """GCS's V4 string-to-sign, built from the specification, not from google's code."""
    canonical = "\n".join([
        method, path, canonical_query([(k, v) for k, v in query.items()
                                       if k != "X-Goog-Signature"]),
        f"host:{host}\n", "host", "UNSIGNED-PAYLOAD",
    ])
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    return "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope,
                      hashlib.sha256(canonical.encode()).hexdigest()]).encode()


def signature_holds(public_key: rsa.RSAPublicKey, url: str, *, method: str = "GET",
                    path: str | None = None, **changed: str) -> bool:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changed)
    message = string_to_sign(method, path or parts.path, parts.netloc, query)
    try:
        public_key.verify(bytes.fromhex(query["X-Goog-Signature"]), message,
                          padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_the_read_grant_is_a_v4_signed_get_of_one_object_generation(stack: DevStack) -> None:
    key = "inbox/scans/résumé 2024.png"
    stack.upload(key, png_bytes())
    run(stack, key)
    (job,) = stack.sandbox.jobs()
    url = next(t for t in job["tasks"] if t["operation"] == "import/url")["payload"]["url"]
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    generation = str(harness(stack).resource(key)["generation"])
    signer = harness(stack).key["client_email"]

    assert parts.netloc == urlsplit(harness(stack).server.endpoint_url).netloc
    assert parts.path == f"/{stack.bucket}/inbox/scans/r%C3%A9sum%C3%A9%202024.png"
    assert set(query) == {"X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date",
                          "X-Goog-Expires", "X-Goog-SignedHeaders", "X-Goog-Signature",
                          "generation"}
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-SignedHeaders"] == "host"
    assert query["generation"] == generation
    assert 0 < int(query["X-Goog-Expires"]) <= READ_GRANT_SECONDS
    date = query["X-Goog-Date"]
    assert datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) <= datetime.now(UTC)
    assert query["X-Goog-Credential"] == f"{signer}/{date[:8]}/auto/storage/goog4_request"

    private = serialization.load_pem_private_key(
        harness(stack).key["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    public = private.public_key()
    assert signature_holds(public, url)  # the signature covers exactly this GET ...
    for method in ("PUT", "POST", "DELETE", "HEAD"):  # ... and no other method
        assert not signature_holds(public, url, method=method)
    assert not signature_holds(public, url, path=f"/{stack.bucket}/inbox/other.png")
    other_bucket = parts.path.replace(f"/{stack.bucket}/", "/another-bucket/", 1)
    assert not signature_holds(public, url, path=other_bucket)
    assert not signature_holds(public, url, generation=str(int(generation) + 1))
    assert not signature_holds(public, url, **{"X-Goog-Expires": "604800"})
    assert not signature_holds(public, url, **{"response-content-disposition": "attachment"})
    assert httpx.get(url).status_code == 200  # and the server hands it to the provider


# --------------------------------------------------------------------------- push auth


def test_pushes_without_a_valid_token_are_refused_and_start_nothing(stack: DevStack) -> None:
    stack.upload("inbox/a.png", png_bytes())
    envelope = stack.event_for("inbox/a.png")
    issuer = harness(stack).issuer
    refused = {
        "missing header": "",
        "wrong audience": issuer.token(audience="https://elsewhere.example/push"),
        "wrong email": issuer.token(email="intruder@evil.iam.gserviceaccount.com"),
        "email_verified false": issuer.token(email_verified=False),
        "expired": issuer.token(issued_at=1_600_000_000),
        "bad signature": issuer.token()[:-8] + "AAAAAAAA",
    }
    for case, token in refused.items():
        answer = push(stack, envelope, token=token)
        assert answer.status_code == 401, case
        assert answer.json() == {"error": "CallbackSignatureError"}, case
    stack.wait()
    assert stack.sandbox.jobs() == []
    assert stack.objects() == {"inbox/a.png": len(png_bytes())}


def test_duplicate_pushes_start_one_job(stack: DevStack) -> None:
    stack.upload("inbox/d.png", png_bytes())
    envelope = stack.event_for("inbox/d.png")
    first = push(stack, envelope)
    again = push(stack, envelope)
    # Cloud Storage may also publish one upload twice, under two message ids
    republished = pubsub_push_envelope(harness(stack).resource("inbox/d.png"))
    third = push(stack, republished)
    stack.wait()
    assert first.json()["counts"] == {"submitted": 1}
    assert again.json()["counts"] == third.json()["counts"] == {"duplicate": 1}
    assert len(stack.sandbox.jobs()) == 1
    assert stack.read_json("results/d.png.json")["status"] == "finished"  # type: ignore[index]


def test_a_new_generation_of_the_same_name_is_a_new_job(stack: DevStack) -> None:
    stack.upload("inbox/e.png", png_bytes())
    run(stack, "inbox/e.png")
    stack.upload("inbox/e.png", png_bytes((80, 60)))
    summary = run(stack, "inbox/e.png")
    assert summary["counts"] == {"submitted": 1}
    assert len(stack.sandbox.jobs()) == 2


def test_answers_pubsub_acts_on(stack: DevStack) -> None:
    stack.upload("inbox/f.png", png_bytes())
    resource = harness(stack).resource("inbox/f.png")
    deleted = push(stack, pubsub_push_envelope(resource, event_type="OBJECT_DELETE"))
    assert deleted.status_code == 200 and deleted.json()["counts"] == {}
    assert push(stack, b"x" * (1024 * 1024 + 1)).status_code == 413
    assert push(stack, b"x" * (1024 * 1024 + 1), token="").status_code == 413
    assert push(stack, {"hello": "world"}).status_code == 400
    assert push(stack, b"not json").status_code == 400
    broken = pubsub_push_envelope(resource)
    broken["message"]["data"] = "%%%"
    assert push(stack, broken).status_code == 200  # acknowledged: a retry cannot fix it
    assert push(stack, b"", token="").status_code == 401
    server = harness(stack).push_server
    assert server is not None and httpx.get(server.url + "/").status_code == 405
    stack.wait()
    assert stack.sandbox.jobs() == []


def test_the_bridges_own_writes_never_start_jobs(stack: DevStack) -> None:
    blob = harness(stack).client.bucket(stack.bucket).blob("inbox/echo.png")
    blob.metadata = {OUTPUT_MARKER: "images-to-pdf"}
    blob.upload_from_string(png_bytes(), content_type="image/png")
    summary = stack.trigger(stack.event_for("inbox/echo.png"))
    assert summary["counts"] == {"skipped": 1}
    assert "loop guard" in summary["objects"][0]["reason"]
    assert stack.sandbox.jobs() == []


def test_structured_cloudevents_start_jobs_like_push_envelopes(stack: DevStack) -> None:
    stack.upload("inbox/g.png", png_bytes())
    resource = harness(stack).resource("inbox/g.png")
    event = {"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized",
             "source": f"//storage.googleapis.com/projects/_/buckets/{stack.bucket}",
             "subject": "objects/inbox/g.png", "id": "123", "data": resource}
    answer = push(stack, event, headers={"Content-Type": "application/cloudevents+json"})
    stack.wait()
    assert answer.json()["counts"] == {"submitted": 1}
    assert stack.read_json("results/g.png.json")["status"] == "finished"  # type: ignore[index]


def test_trouble_on_our_side_asks_pubsub_to_deliver_again(stack: DevStack) -> None:
    stack.upload("inbox/h.png", png_bytes())
    envelope = stack.event_for("inbox/h.png")
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    key = secrets.get_secret_value(SecretId=SECRET_NAME)["SecretString"]
    secrets.delete_secret(SecretId=SECRET_NAME, ForceDeleteWithoutRecovery=True)
    assert push(stack, envelope).status_code == 503
    assert stack.sandbox.jobs() == []
    secrets.create_secret(Name=SECRET_NAME, SecretString=key)
    answer = push(stack, envelope)  # Pub/Sub's redelivery
    stack.wait()
    assert answer.status_code == 200 and answer.json()["counts"] == {"submitted": 1}
    assert len(stack.sandbox.jobs()) == 1


def test_transient_provider_failures_are_retried_until_the_dead_letter_attempt(
        stack: DevStack, monkeypatch: pytest.MonkeyPatch) -> None:
    from convbridge.triggers import pubsub

    seen: list[bool] = []

    def submit_all(bridge: Any, refs: Any, *, final_attempt: bool) -> list[Any]:
        seen.append(final_attempt)
        return []

    monkeypatch.setattr(pubsub, "submit_all", submit_all)
    stack.upload("inbox/i.png", png_bytes())
    resource = harness(stack).resource("inbox/i.png")
    for attempt in (None, 1, 4, 5, 9):
        push(stack, pubsub_push_envelope(resource, delivery_attempt=attempt))
    assert seen == [True, False, False, True, True]


def test_no_secret_reaches_any_log_line(stack: DevStack, capfd: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    stack.upload("inbox/s.png", png_bytes())
    stack.upload("inbox/t.png", b"corrupt")
    token = harness(stack).issuer.token()
    for key in ("inbox/s.png", "inbox/t.png"):
        push(stack, stack.event_for(key), token=token)
    push(stack, stack.event_for("inbox/s.png"),
         token=harness(stack).issuer.token(audience="https://elsewhere.example"))
    stack.wait()
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "submitted" in logged
    private_key = harness(stack).key["private_key"]
    for secret in (token, token.split(".")[2], stack.api_key, stack.signing_secret,
                   stack.context_key, private_key.splitlines()[1]):
        assert secret not in logged
    assert not re.search(r"X-Goog-(Signature|Credential)=", logged)
    assert "upload_id=" not in logged


# ------------------------------------------------------------------ relayed writes, retried


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[FakeGcsServer]:
    with FakeGcsServer() as server:
        yield server


@dataclass
class Bucket:
    """A fresh bucket on fake-gcs-server and the adapter, with 256 KiB upload chunks so a few
    hundred kilobytes take the resumable path."""

    gcs: GcsStorage
    name: str
    key: dict[str, str]


@pytest.fixture
def bucket(gcs_server: FakeGcsServer) -> Bucket:
    key = service_account_key()
    credentials = service_account.Credentials.from_service_account_info(key)
    client = storage_client(credentials, gcs_server.endpoint_url)
    name = f"relay-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return Bucket(GcsStorage(client=client, signer=credentials, chunk_size=256 * 1024), name, key)


class FlakyDownloads:
    """A provider's download URL whose first GET announces the whole file, sends part of it and
    drops the connection; ``between`` runs before the next GET is answered."""

    def __init__(self, body: bytes, between: Any = None) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests += 1
                if outer.requests == 2 and between is not None:
                    between()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if outer.requests > 1 else body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/output.pdf"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


#: the source the relayed outputs below are made from
SOURCE = source_tag("convbridge-relay", "inbox/report.docx")
#: one relay that fits a single request, one that needs a resumable upload of three chunks
SIZES = [100_000, 700_000]


@pytest.mark.parametrize("size", SIZES)
def test_a_relay_retried_after_a_partial_upload_leaves_one_complete_object(
        bucket: Bucket, size: int) -> None:
    gcs = bucket.gcs
    body = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
    downloads = FlakyDownloads(body)
    try:
        with httpx.Client() as http:
            written = relay_output(http, gcs, bucket.name, "outbox/report.docx.pdf",
                                   OutputFile("report.pdf", size=size, url=downloads.url),
                                   marker="rule-a", policy=LOOPBACK, source=SOURCE)
    finally:
        downloads.stop()
    assert downloads.requests == 2 and written == size
    assert list(gcs.list_keys(bucket.name, "")) == ["outbox/report.docx.pdf"]
    found = gcs.stat(bucket.name, "outbox/report.docx.pdf")
    assert found is not None and found.size == size
    assert found.metadata == {OUTPUT_MARKER: "rule-a", SOURCE_TAG: SOURCE}
    assert gcs.read_bytes(bucket.name, "outbox/report.docx.pdf") == body


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("existing", [False, True])
def test_a_retry_never_replaces_what_someone_else_wrote_in_between(
        bucket: Bucket, size: int, existing: bool) -> None:
    gcs, key = bucket.gcs, "outbox/report.docx.pdf"
    if existing:  # the relay replaces an older output of an earlier version of the source
        gcs.put_bytes(bucket.name, key, b"older", content_type="application/pdf",
                      metadata={OUTPUT_MARKER: "rule-a", SOURCE_TAG: SOURCE})
    newer = b"written by a newer job"

    def someone_else_writes() -> None:
        gcs.put_bytes(bucket.name, key, newer, content_type="application/pdf",
                      metadata={OUTPUT_MARKER: "rule-b"})

    downloads = FlakyDownloads(b"x" * size, between=someone_else_writes)
    try:
        with httpx.Client() as http, pytest.raises(OutputCollision):
            relay_output(http, gcs, bucket.name, key,
                         OutputFile("report.pdf", size=size, url=downloads.url),
                         marker="rule-a", policy=LOOPBACK, source=SOURCE)
    finally:
        downloads.stop()
    assert downloads.requests == 2  # the attempt after the newer object appeared gave up
    assert list(gcs.list_keys(bucket.name, "")) == [key]
    assert gcs.read_bytes(bucket.name, key) == newer


def test_a_newer_object_written_during_a_resumable_upload_is_left_alone(bucket: Bucket) -> None:
    gcs = bucket.gcs

    def chunks() -> Iterator[bytes]:
        yield b"a" * 300_000
        gcs.put_bytes(bucket.name, "outbox/raced.pdf", b"newer",
                      content_type="application/pdf", metadata={})
        yield b"b" * 300_000

    with pytest.raises(StaleWrite, match="is at generation"):
        gcs.write_stream(bucket.name, "outbox/raced.pdf", chunks(), expected_size=600_000)
    assert gcs.read_bytes(bucket.name, "outbox/raced.pdf") == b"newer"


@pytest.mark.parametrize(("sent", "announced"), [(600_000, 600_001), (600_000, 500_000),
                                                 (1000, 1001), (1000, 999)])
def test_a_stream_of_the_wrong_length_leaves_nothing_behind(bucket: Bucket, sent: int,
                                                            announced: int) -> None:
    pieces = [b"z" * 1000] * (sent // 1000)
    with pytest.raises(StorageError, match="nothing was written"):
        bucket.gcs.write_stream(bucket.name, "outbox/wrong.bin", iter(pieces),
                                expected_size=announced)
    assert list(bucket.gcs.list_keys(bucket.name, "")) == []


def test_reads_copies_and_deletes(bucket: Bucket) -> None:
    gcs = bucket.gcs
    body = bytes(range(256)) * 40_000  # over two read chunks
    written = gcs.write_stream(bucket.name, "inbox/big.bin", iter([body]),
                               metadata={"origin": "test"}, expected_size=len(body))
    assert written == len(body) and gcs.read_bytes(bucket.name, "inbox/big.bin") == body
    assert gcs.copy(bucket.name, "inbox/big.bin", "failed/big.bin") == len(body)
    copied = gcs.stat(bucket.name, "failed/big.bin")
    assert copied is not None and copied.metadata == {"origin": "test"}
    gcs.delete(bucket.name, "inbox/big.bin")
    gcs.delete(bucket.name, "inbox/big.bin")  # a missing object is not an error
    assert list(gcs.list_keys(bucket.name, "")) == ["failed/big.bin"]
    with pytest.raises(StorageError, match="does not exist"):
        gcs.copy(bucket.name, "inbox/big.bin", "elsewhere.bin")
    with pytest.raises(StorageError, match="does not exist"):
        gcs.read_bytes(bucket.name, "inbox/big.bin")


def test_conditional_record_writes_lose_to_newer_ones(bucket: Bucket) -> None:
    gcs = bucket.gcs
    first = gcs.write_json(bucket.name, "results/a.json", {"n": 1}, marker="r")
    second = gcs.write_json(bucket.name, "results/a.json", {"n": 2}, marker="r",
                            if_revision=first)
    with pytest.raises(StaleWrite):
        gcs.write_json(bucket.name, "results/a.json", {"n": 3}, marker="r", if_revision=first)
    assert json.loads(gcs.read_bytes(bucket.name, "results/a.json")) == {"n": 2}
    assert second != first


def test_read_grants_are_signed_urls_of_at_most_seven_days(bucket: Bucket) -> None:
    gcs = bucket.gcs
    generation = gcs.put_bytes(bucket.name, "inbox/long.png", b"x", content_type="image/png",
                               metadata={})
    ref = ObjectRef("gcs", bucket.name, "inbox/long.png", generation)
    grant = gcs.grant_read(ref, 10**7)
    assert dict(parse_qsl(urlsplit(grant.url or "").query))["X-Goog-Expires"] == "604800"
    assert grant.kind == "presigned_url" and f"generation {generation}" in grant.scope
    assert grant.url is not None and grant.url not in repr(grant)
    with pytest.raises(GrantError):
        gcs.grant_read(ref, 900, kind="sts_session")
    with pytest.raises(GrantError, match="relayed"):
        gcs.grant_write(OutputTarget("gcs", bucket.name, "outbox/long.pdf"), 900)


def test_an_unusable_key_or_endpoint_fails_loudly_without_quoting_the_key() -> None:
    key = service_account_key()
    broken = SecretValue("convbridge/gcs", {**key, "private_key": "-----BEGIN nonsense"})
    with pytest.raises(SecretError) as caught:
        signing_credentials("convbridge/gcs", broken)
    assert "nonsense" not in str(caught.value) and "not a usable service-account key" in str(
        caught.value)
    credentials = signing_credentials("convbridge/gcs", SecretValue("convbridge/gcs", key))
    with pytest.raises(ConfigError, match="is not an http"):
        storage_client(credentials, "ftp://127.0.0.1:1")


def test_a_fake_gcs_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="cannot run fake-gcs-server"):
        FakeGcsServer(binary=tmp_path / "missing").start()
    with pytest.raises(ServerStartError, match="exited with status 1"):
        FakeGcsServer(binary=Path("/bin/false")).start()


# --------------------------------------------------------------------------- imports, demo


def test_other_triggers_never_import_the_google_sdk() -> None:
    """A fresh interpreter, as at a cold start: loading each handler pulls in no Google SDK.
    (The GCS trigger imports google-auth only when it checks a token.)"""
    code = (
        "import json, sys\n"
        "from devstack.lambda_local import load_function\n"
        "loaded = {}\n"
        "for name in ('s3_trigger', 'webhook', 'gcs_trigger'):\n"
        "    load_function(name)\n"
        "    loaded[name] = sorted(m for m in sys.modules if m.startswith(\n"
        "        ('google.cloud', 'google.auth', 'google.oauth2', 'google.api_core')))\n"
        "print(json.dumps(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"s3_trigger": [], "webhook": [], "gcs_trigger": []}


def test_the_gcs_demo_runs_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "devstack.demo", "--storage", "gcs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gs://convbridge-demo/outbox/photos/sunset beach.png.pdf" in done.stdout
    assert "failed with CONVERSION_FAILED" in done.stdout
    assert "demo succeeded" in done.stdout


OUTPUT_TAG = {OUTPUT_MARKER: "rule-a", SOURCE_TAG: SOURCE}


@pytest.mark.parametrize("size", SIZES)
def test_an_output_never_replaces_an_object_the_bridge_did_not_make_for_its_source(
        bucket: Bucket, size: int) -> None:
    gcs = bucket.gcs
    gcs.put_bytes(bucket.name, "outbox/mine.pdf", b"the user's own file",
                  content_type="application/pdf", metadata={})
    with pytest.raises(OutputCollision):
        gcs.write_stream(bucket.name, "outbox/mine.pdf", [b"x" * size], metadata=OUTPUT_TAG)
    assert gcs.read_bytes(bucket.name, "outbox/mine.pdf") == b"the user's own file"
    gcs.write_stream(bucket.name, "outbox/ours.pdf", [b"first"], metadata=OUTPUT_TAG)
    assert gcs.write_stream(bucket.name, "outbox/ours.pdf", [b"y" * size],
                            metadata=OUTPUT_TAG) == size
    assert gcs.read_bytes(bucket.name, "outbox/ours.pdf") == b"y" * size


def test_an_object_appearing_during_a_resumable_output_is_left_alone(bucket: Bucket) -> None:
    gcs = bucket.gcs

    def chunks() -> Iterator[bytes]:
        yield b"a" * 300_000
        gcs.put_bytes(bucket.name, "outbox/raced.png.pdf", b"appeared meanwhile",
                      content_type="application/pdf", metadata={})
        yield b"b" * 300_000

    with pytest.raises(OutputCollision):
        gcs.write_stream(bucket.name, "outbox/raced.png.pdf", chunks(), metadata=OUTPUT_TAG)
    assert gcs.read_bytes(bucket.name, "outbox/raced.png.pdf") == b"appeared meanwhile"


def test_a_create_only_record_write_is_refused_once_a_record_exists(bucket: Bucket) -> None:
    check_conditional_record_writes(bucket.gcs, bucket.name)
