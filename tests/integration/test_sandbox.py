"""Integration tests of the sandbox's CloudConvert v2 dialect over real HTTP: a real moto S3
server holds the inputs and receives the outputs, a local HTTP receiver records callbacks byte for
byte, and every assertion is about what crossed the wire or landed in storage."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from PIL import Image

from devstack.sandbox import Faults, Sandbox

API_KEY = "sandbox-api-key"
SIGNING_SECRET = "sandbox-signing-secret"
# moto keeps state per process, shared by every moto server in it: use a name of our own.
BUCKET = f"sandbox-test-{uuid.uuid4().hex[:12]}"
REGION = "us-east-1"
# Distinctive values so a leak into any response is easy to spot.
ACCESS_KEY_ID = "AKIASANDBOXLEAKCHECK1"
SECRET_ACCESS_KEY = "secret-access-key-must-never-be-echoed"
SESSION_TOKEN = "session-token-must-never-be-echoed"


def _png(mode: str = "RGBA", size: tuple[int, int] = (32, 24)) -> bytes:
    image = Image.new(mode, size, (200, 40, 40, 128) if mode == "RGBA" else (200, 40, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    # The sandbox delivers callbacks from several threads at once.
    request_queue_size = 128


class Receiver:
    """A callback endpoint: answers each path with its scripted statuses (then 200) and
    records the raw body and headers of every request."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.script: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.calls.append({
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    })
                    planned = receiver.script.get(self.path, [])
                    status = planned.pop(0) if planned else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        server = self.server
        threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05),
                         daemon=True).start()

    def calls_to(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [call for call in self.calls if call["path"] == path]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    httpx.post(url + "/moto-api/reset", trust_env=False)
    server.stop()


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    # Dummy credentials for this setup client only; the sandbox gets its own in each task.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "setup-dummy")
        env.setenv("AWS_SECRET_ACCESS_KEY", "setup-dummy")
        client = boto3.client(
            "s3", region_name=REGION, endpoint_url=moto_url,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="in/photo.png", Body=_png())
    client.put_object(Bucket=BUCKET, Key="in/my photo.png", Body=_png("RGB"))
    client.put_object(Bucket=BUCKET, Key="in/corrupt.png", Body=b"\x89PNG\r\n\x1a\nnot really")
    client.put_object(Bucket=BUCKET, Key="pages/a.png", Body=_png("RGB", (10, 10)))
    client.put_object(Bucket=BUCKET, Key="pages/b.png", Body=_png("RGB", (20, 10)))
    return client


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, callback_attempts=4,
                 callback_backoff_seconds=0.05) as sb:
        yield sb


@pytest.fixture(autouse=True)
def stray_aws_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ambient endpoint must not redirect the sandbox's S3 calls."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url + "/v2", trust_env=False, timeout=10,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def s3_fields(moto_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "bucket": BUCKET, "region": REGION, "endpoint": moto_url,
        "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY,
        "session_token": SESSION_TOKEN, **extra,
    }


def run_job(api: httpx.Client, sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    job = created.json()["data"]
    assert job["status"] == "waiting"
    sandbox.wait_idle(timeout=15)
    fetched = api.get(f"/jobs/{job['id']}")
    assert fetched.status_code == 200
    data: dict[str, Any] = fetched.json()["data"]
    return data


def by_name(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["name"]: task for task in job["tasks"]}


def signature_ok(call: dict[str, Any]) -> bool:
    expected = hmac.new(SIGNING_SECRET.encode(), call["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(call["headers"]["cloudconvert-signature"], expected)


def test_s3_to_pdf_with_signed_callback(
    api: httpx.Client, sandbox: Sandbox, s3: Any, moto_url: str, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # boto3 with ambient configuration would raise ProfileNotFound here; the sandbox must use
    # only the task's credentials. (Only this success path: moto's own error rendering in this
    # process builds a default botocore session and would trip over the missing profile.)
    monkeypatch.setenv("AWS_PROFILE", "convbridge-no-such-profile")
    job = run_job(api, sandbox, {
        "tag": "ctx-1",
        "webhook_url": receiver.url + "/hook/pdf",
        "tasks": {
            "import-1": {"operation": "import/s3", **s3_fields(moto_url, key="in/photo.png")},
            "convert-1": {"operation": "convert", "input": "import-1", "output_format": "pdf"},
            "export-1": {
                "operation": "export/s3", "input": ["convert-1"],
                **s3_fields(moto_url, key_prefix="out/", cache_control="max-age=60",
                            metadata={"convbridge": "output"}),
            },
        },
    })
    assert job["status"] == "finished" and job["tag"] == "ctx-1"
    tasks = by_name(job)
    assert [t["status"] for t in tasks.values()] == ["finished"] * 3
    assert tasks["convert-1"]["depends_on_task_ids"] == [tasks["import-1"]["id"]]

    pdf = s3.get_object(Bucket=BUCKET, Key="out/photo.pdf")
    data = pdf["Body"].read()
    assert data.startswith(b"%PDF")
    assert pdf["ContentType"] == "application/pdf"
    assert pdf["CacheControl"] == "max-age=60"
    assert pdf["Metadata"] == {"convbridge": "output"}
    assert tasks["export-1"]["result"] == {"files": [{"filename": "photo.pdf",
                                                      "size": len(data)}]}

    [call] = receiver.calls_to("/hook/pdf")
    assert signature_ok(call)
    assert call["headers"]["content-type"] == "application/json"
    assert call["headers"]["user-agent"] == "CloudConvert-Sandbox"
    payload = json.loads(call["body"])
    assert payload["event"] == "job.finished"
    assert payload["job"] == job
    assert sandbox.deliveries()[-1] == {"job_id": job["id"], "event": "job.finished",
                                        "status": 200, "attempt": 1,
                                        "url": receiver.url + "/hook/pdf"}

    # Credentials are hidden everywhere the job is shown.
    shown = [api.get(f"/jobs/{job['id']}").text, call["body"].decode(), json.dumps(sandbox.jobs()),
             api.get(f"/tasks/{tasks['export-1']['id']}").text]
    for text in shown:
        for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN):
            assert secret not in text
    payload_shown = tasks["import-1"]["payload"]
    assert payload_shown["secret_access_key"] is None and payload_shown["key"] == "in/photo.png"


def test_presigned_url_to_jpeg_download(
    api: httpx.Client, sandbox: Sandbox, s3: Any
) -> None:
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "in/my photo.png"}, ExpiresIn=300
    )
    assert "X-Amz-Signature" in url
    job = run_job(api, sandbox, {"tasks": {
        "fetch": {"operation": "import/url", "url": url},
        "jpg": {"operation": "convert", "input": "fetch", "input_format": "png",
                "output_format": "jpg", "quality": 80},
        "out": {"operation": "export/url", "input": "jpg"},
    }})
    assert job["status"] == "finished", job
    [file] = by_name(job)["out"]["result"]["files"]
    assert file["filename"] == "my photo.jpg"
    assert file["url"].startswith(sandbox.url + "/files/")
    assert file["url"].endswith("/my%20photo.jpg")

    assert "size" not in file  # optional in CloudConvert's export/url results, left out here

    # the download URL redirects to the storage host, as CloudConvert's does
    with httpx.Client(trust_env=False, follow_redirects=True) as client:
        got = client.get(file["url"])
        head = client.head(file["url"])
        guessed = client.get(file["url"].rsplit("/", 2)[0] + "/not-a-token/my%20photo.jpg")
    assert [r.status_code for r in got.history] == [302]
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert int(got.headers["content-length"]) == len(got.content)
    image = Image.open(io.BytesIO(got.content))
    assert image.format == "JPEG" and image.size == (32, 24)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert guessed.status_code == 404


def test_corrupt_input_fails_the_job(
    api: httpx.Client, sandbox: Sandbox, s3: Any, moto_url: str, receiver: Receiver
) -> None:
    job = run_job(api, sandbox, {
        "webhook_url": receiver.url + "/hook/corrupt",
        "tasks": {
            "in": {"operation": "import/s3", **s3_fields(moto_url, key="in/corrupt.png")},
            "conv": {"operation": "convert", "input": "in", "output_format": "pdf"},
            "out": {"operation": "export/s3", "input": "conv",
                    **s3_fields(moto_url, key="failed/corrupt.pdf")},
        },
    })
    tasks = by_name(job)
    assert job["status"] == "error"
    assert tasks["in"]["status"] == "finished"
    assert (tasks["conv"]["status"], tasks["conv"]["code"]) == ("error", "CONVERSION_FAILED")
    assert "corrupt.png" in tasks["conv"]["message"]
    assert (tasks["out"]["status"], tasks["out"]["code"]) == ("error", "INPUT_TASK_FAILED")
    assert tasks["conv"]["result"] is None
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="failed/").get("KeyCount") == 0

    [call] = receiver.calls_to("/hook/corrupt")
    assert signature_ok(call)
    payload = json.loads(call["body"])
    assert payload["event"] == "job.failed" and payload["job"]["status"] == "error"


def test_storage_and_format_failures(
    api: httpx.Client, sandbox: Sandbox, s3: Any, moto_url: str
) -> None:
    missing_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "in/absent.png"}, ExpiresIn=300
    )
    job = run_job(api, sandbox, {"tasks": {
        "no-key": {"operation": "import/s3", **s3_fields(moto_url, key="in/absent.png")},
        "no-url": {"operation": "import/url", "url": missing_url},
        "ok": {"operation": "import/s3", **s3_fields(moto_url, key="in/photo.png")},
        "docx": {"operation": "convert", "input": "ok", "output_format": "docx"},
        "no-bucket": {"operation": "export/s3", "input": "ok",
                      **s3_fields(moto_url, bucket="no-such-bucket", key="x.png")},
    }})
    tasks = by_name(job)
    assert job["status"] == "error"
    assert tasks["no-key"]["code"] == "IMPORT_FAILED"
    assert "NoSuchKey" in tasks["no-key"]["message"]
    assert tasks["no-url"]["code"] == "IMPORT_FAILED"
    assert "HTTP 404" in tasks["no-url"]["message"]
    # The presigned query string is a credential: it must not be echoed in the message.
    assert "X-Amz-Signature" not in tasks["no-url"]["message"]
    assert tasks["docx"]["code"] == "UNSUPPORTED_CONVERSION"
    assert tasks["no-bucket"]["code"] == "EXPORT_FAILED"
    assert "NoSuchBucket" in tasks["no-bucket"]["message"]


def test_key_prefix_import_and_numbered_export_keys(
    api: httpx.Client, sandbox: Sandbox, s3: Any, moto_url: str
) -> None:
    job = run_job(api, sandbox, {"tasks": {
        "pages": {"operation": "import/s3", **s3_fields(moto_url, key_prefix="pages/")},
        "webp": {"operation": "convert", "input": "pages", "output_format": "webp"},
        "out": {"operation": "export/s3", "input": "webp",
                **s3_fields(moto_url, key="numbered/page-%02d.webp")},
    }})
    assert job["status"] == "finished", job
    sizes = []
    for key in ("numbered/page-01.webp", "numbered/page-02.webp"):
        image = Image.open(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        assert image.format == "WEBP"
        sizes.append(image.size)
    assert sizes == [(10, 10), (20, 10)]


def test_auth_validation_and_not_found(api: httpx.Client, sandbox: Sandbox) -> None:
    valid = {"tasks": {"a": {"operation": "import/url", "url": "http://127.0.0.1:9/x.png"}}}
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        denied = api.post("/jobs", json=valid, headers=headers)
        assert denied.status_code == 401
        assert denied.json() == {"message": "Unauthenticated.", "code": "UNAUTHENTICATED"}

    jobs_before = len(sandbox.jobs())

    def invalid(tasks: dict[str, Any]) -> dict[str, list[str]]:
        response = api.post("/jobs", json={"tasks": tasks})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "INVALID_DATA"
        errors: dict[str, list[str]] = response.json()["errors"]
        return errors

    assert "tasks.a.operation" in invalid({"a": {"operation": "import/magic"}})
    assert "tasks.b.input" in invalid({
        "a": {"operation": "import/url", "url": "http://example.com/a.png"},
        "b": {"operation": "convert", "input": "nope", "output_format": "pdf"},
    })
    assert "tasks.a.url" in invalid({
        "a": {"operation": "import/url", "url": "http://example.com/with space.png"},
    })
    assert "tasks.a b" in invalid({"a b": {"operation": "export/url", "input": []}})
    errors = invalid({"a": {"operation": "import/s3", "bucket": "b"}})
    assert {"tasks.a.region", "tasks.a.access_key_id", "tasks.a.key"} <= set(errors)
    assert api.post("/jobs", json={"tasks": {}}).status_code == 422

    assert api.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
    assert len(sandbox.jobs()) == jobs_before


def test_callback_retries(
    api: httpx.Client, sandbox: Sandbox, moto_url: str, receiver: Receiver
) -> None:
    receiver.script["/hook/flaky"] = [500, 500]
    receiver.script["/hook/gone"] = [410]
    receiver.script["/hook/down"] = [503] * 10
    ids = {}
    for path in ("/hook/flaky", "/hook/gone", "/hook/down"):
        created = api.post("/jobs", json={
            "webhook_url": receiver.url + path,
            "tasks": {"in": {"operation": "import/s3",
                             **s3_fields(moto_url, key="in/photo.png")}},
        })
        assert created.status_code == 201
        ids[path] = created.json()["data"]["id"]
    sandbox.wait_idle(timeout=15)

    def attempts(job_id: str) -> list[tuple[int | None, int]]:
        return [(d["status"], d["attempt"]) for d in sandbox.deliveries()
                if d["job_id"] == job_id]

    assert attempts(ids["/hook/flaky"]) == [(500, 1), (500, 2), (200, 3)]
    flaky = receiver.calls_to("/hook/flaky")
    assert len({call["body"] for call in flaky}) == 1 and all(map(signature_ok, flaky))
    assert attempts(ids["/hook/gone"]) == [(410, 1)]
    assert attempts(ids["/hook/down"]) == [(503, 1), (503, 2), (503, 3), (503, 4)]


def test_fault_injection(moto_url: str, s3: Any, receiver: Receiver) -> None:
    body = {"tasks": {"in": {"operation": "import/s3",
                             **s3_fields(moto_url, key="in/photo.png")}}}
    for faults, status in ((Faults(fail_rate_429=1.0), 429), (Faults(fail_rate_503=1.0), 503)):
        with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb:
            answer = httpx.post(sb.url + "/v2/jobs", json=body, trust_env=False,
                                headers={"Authorization": f"Bearer {API_KEY}"})
            assert answer.status_code == status and answer.headers["retry-after"] == "1"
            assert sb.jobs() == []

    faults = Faults(latency_seconds=0.3, fail_operations=frozenset({"convert"}),
                    duplicate_callbacks=1)
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb:
        started = time.monotonic()
        answer = httpx.post(sb.url + "/v2/jobs", trust_env=False,
                            headers={"Authorization": f"Bearer {API_KEY}"}, json={
            "webhook_url": receiver.url + "/hook/faults",
            "tasks": {**body["tasks"], "c": {"operation": "convert", "input": "in",
                                             "output_format": "jpg"}},
        })
        assert time.monotonic() - started >= 0.3
        assert answer.status_code == 201
        sb.wait_idle(timeout=10)
        [job] = sb.jobs()
        convert = by_name(job)["c"]
        assert (convert["status"], convert["code"]) == ("error", "CONVERSION_FAILED")
        assert [(d["status"], d["attempt"]) for d in sb.deliveries()] == [(200, 1), (200, 2)]
        calls = receiver.calls_to("/hook/faults")
        assert len(calls) == 2 and calls[0]["body"] == calls[1]["body"]


# -- listing, transport faults, request logs, large files, load ---------------------------------

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _vmrss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _write_file(path: Any, size: int, seed: bytes = b"x") -> str:
    """Write `size` bytes of varied content in 1 MiB pieces (never all in memory); sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (1024 * 1024 // 32)
    with open(path, "wb") as out:
        written = 0
        number = 0
        while written < size:
            piece = (number.to_bytes(8, "big") + block)[: min(len(block), size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
            number += 1
    return digest.hexdigest()


def _url_job(source_url: str, *, tag: str | None = None, webhook: str | None = None,
             convert: bool = False) -> dict[str, Any]:
    tasks: dict[str, Any] = {"in": {"operation": "import/url", "url": source_url}}
    last = "in"
    if convert:
        tasks["conv"] = {"operation": "convert", "input": "in", "output_format": "jpg"}
        last = "conv"
    tasks["out"] = {"operation": "export/url", "input": last}
    body: dict[str, Any] = {"tasks": tasks}
    if tag is not None:
        body["tag"] = tag
    if webhook is not None:
        body["webhook_url"] = webhook
    return body


def _find_by_tag(client: httpx.Client, tag: str, **params: str) -> dict[str, Any]:
    listed = client.get("/jobs", params={"filter[tag]": tag, **params})
    assert listed.status_code == 200, listed.text
    payload: dict[str, Any] = listed.json()
    return payload


def test_list_jobs_filters_on_the_exact_long_tag(api: httpx.Client, sandbox: Sandbox) -> None:
    # ~1 KB, with every character that URL encoding or a loose match could get wrong.
    tag = f"ctx-{uuid.uuid4().hex}:" + "a&b=c+d e%20f/é?#[x];" * 48
    assert len(tag) > 1000
    unreachable = "http://127.0.0.1:9/x.png"
    ids = {}
    for name, each in (("prefix", tag[:-1]), ("exact", tag), ("longer", tag + "x"),
                       ("upper", tag.upper())):
        created = api.post("/jobs", json=_url_job(unreachable, tag=each))
        assert created.status_code == 201
        ids[name] = created.json()["data"]["id"]
    sandbox.wait_idle(timeout=15)

    found = _find_by_tag(api, tag)
    assert [job["id"] for job in found["data"]] == [ids["exact"]]
    [job] = found["data"]
    assert job["tag"] == tag and job["status"] == "error"
    assert "tasks" not in job  # only with include=tasks, as CloudConvert lists them
    assert found["meta"]["per_page"] == 100 and found["meta"]["current_page"] == 1
    assert found["links"]["next"] is None

    with_tasks = _find_by_tag(api, tag, include="tasks")["data"][0]
    assert [task["name"] for task in with_tasks["tasks"]] == ["in", "out"]
    assert _find_by_tag(api, tag, **{"filter[status]": "error"})["data"] == found["data"]
    assert _find_by_tag(api, tag, **{"filter[status]": "finished"})["data"] == []
    assert _find_by_tag(api, "no-such-tag-" + uuid.uuid4().hex)["data"] == []
    assert _find_by_tag(api, "")["data"] == []

    # Newest first, paged, with links that keep the filter.
    first = api.get("/jobs", params={"per_page": "2"}).json()
    assert [job["id"] for job in first["data"]] == [ids["upper"], ids["longer"]]
    assert (first["meta"]["from"], first["meta"]["to"]) == (1, 2)
    second = api.get(first["links"]["next"]).json()
    assert [job["id"] for job in second["data"]] == [ids["exact"], ids["prefix"]]
    assert api.get("/jobs", params={"per_page": "0"}).status_code == 422
    assert api.get("/jobs", params={"filter[status]": "done"}).status_code == 422


def test_timeout_fault_creates_the_job_but_holds_the_answer(
    tmp_path: Any, receiver: Receiver
) -> None:
    (tmp_path / "in.png").write_bytes(_png())
    faults = Faults(timeout_rate=1.0, timeout_seconds=3.0)
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb:
        source = sb.serve_file(tmp_path / "in.png", "in.png")
        tag = "timeout-" + uuid.uuid4().hex
        body = _url_job(source, tag=tag, webhook=receiver.url + "/hook/timeout", convert=True)
        impatient = httpx.Timeout(5.0, read=0.5)
        with httpx.Client(base_url=sb.url + "/v2", trust_env=False, timeout=impatient,
                          headers=AUTH) as client:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                client.post("/jobs", json=body)
            assert time.monotonic() - started < 2
            [job] = _find_by_tag(client, tag)["data"]
        sb.wait_idle(timeout=10)
        assert sb.job_count() == 1
        [finished] = sb.jobs()
        assert finished["id"] == job["id"] and finished["status"] == "finished"
        [call] = receiver.calls_to("/hook/timeout")
        assert json.loads(call["body"])["job"]["id"] == job["id"]
        [post, listing] = sb.requests()
        assert (post["method"], post["path"], post["status"]) == ("POST", "/v2/jobs", "timeout")
        assert (listing["method"], listing["path"], listing["status"]) == ("GET", "/v2/jobs", 200)
        stopping = time.monotonic()
    # stop() released the held answer instead of waiting it out.
    assert time.monotonic() - stopping < 2


def test_drop_fault_cuts_downloads_short_and_can_be_switched_off(tmp_path: Any) -> None:
    size = 256 * 1024
    digest = _write_file(tmp_path / "big.bin", size)
    faults = Faults(drop_download_rate=1.0, drop_after_bytes=1000)
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb, \
            httpx.Client(trust_env=False, timeout=10, follow_redirects=True) as client:
        url = sb.serve_file(tmp_path / "big.bin", "big file.bin")
        assert url.startswith(sb.url + "/files/") and url.endswith("/big%20file.bin")
        received = 0
        with pytest.raises(httpx.TransportError), client.stream("GET", url) as response:
            assert response.headers["content-length"] == str(size)
            for chunk in response.iter_bytes():
                received += len(chunk)
        assert received == 1000
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(url)

        sb.set_faults(Faults())
        whole = client.get(url)
        assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == digest
        path = url[len(sb.url):]
        # each download is a redirect hop, then the body from the storage host
        assert {d["status"] for d in sb.downloads()[::2]} == {302}
        assert [(d["path"], d["status"], d["dropped"]) for d in sb.downloads()[1::2]] == [
            (path, 200, True), (path, 200, True), (path, 200, False),
        ]
        assert sb.requests() == []


def test_retry_after_as_http_date_and_the_request_log() -> None:
    faults = Faults(fail_rate_429=1.0, retry_after_seconds=3, retry_after_http_date=True)
    body = _url_job("http://127.0.0.1:9/x.png")
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb, \
            httpx.Client(base_url=sb.url + "/v2", trust_env=False, headers=AUTH) as client:
        refused = client.post("/jobs", json=body)
        assert refused.status_code == 429
        when = email.utils.parsedate_to_datetime(refused.headers["retry-after"])
        assert refused.headers["retry-after"].endswith(" GMT")
        ahead = (when - datetime.now(UTC)).total_seconds()
        assert 0 < ahead <= 4

        sb.set_faults(Faults(fail_rate_503=1.0, retry_after_seconds=7))
        unavailable = client.post("/jobs", json=body)
        assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "7"
        sb.set_faults(Faults())
        assert client.post("/jobs", json=body).status_code == 201
        assert client.get("/jobs", params={"filter[tag]": "x"}).status_code == 200
        assert client.get("/nowhere").status_code == 404
        sb.wait_idle(timeout=10)

        log = sb.requests()
        assert [(e["method"], e["path"], e["status"]) for e in log] == [
            ("POST", "/v2/jobs", 429), ("POST", "/v2/jobs", 503), ("POST", "/v2/jobs", 201),
            ("GET", "/v2/jobs", 200), ("GET", "/v2/nowhere", 404),
        ]
        assert log[0]["retry_after"] == refused.headers["retry-after"]
        assert [e["retry_after"] for e in log[1:]] == ["7", None, None, None]
        times = [e["time"] for e in log]
        assert times == sorted(times) and times[-1] <= time.monotonic()
        assert sb.job_count() == 1


def test_serve_file_streams_64_mib_from_disk(tmp_path: Any) -> None:
    size = 64 * 1024 * 1024
    digest = _write_file(tmp_path / "large.bin", size, seed=b"large")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _vmrss_kib())
            time.sleep(0.005)

    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sb, \
            httpx.Client(trust_env=False, timeout=30, follow_redirects=True) as client:
        url = sb.serve_file(tmp_path / "large.bin", "large.bin")
        baseline = _vmrss_kib()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        received = hashlib.sha256()
        with client.stream("GET", url) as response:
            assert response.headers["content-length"] == str(size)
            for chunk in response.iter_bytes(256 * 1024):
                received.update(chunk)
        done.set()
        sampler.join()
    assert received.hexdigest() == digest
    assert (peak[0] - baseline) / 1024 < 30, f"RSS grew by {(peak[0] - baseline) / 1024:.1f} MB"


def test_large_outputs_spill_to_disk_and_are_removed_on_stop(
    tmp_path: Any, s3: Any, moto_url: str
) -> None:
    size = 12 * 1024 * 1024
    digest = _write_file(tmp_path / "scan.bin", size, seed=b"scan")
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sb, \
            httpx.Client(base_url=sb.url + "/v2", trust_env=False, headers=AUTH,
                         timeout=30, follow_redirects=True) as client:
        source = sb.serve_file(tmp_path / "scan.bin", "scan.bin")
        body = _url_job(source)
        body["tasks"]["s3out"] = {"operation": "export/s3", "input": "in",
                                  **s3_fields(moto_url, key="spill/scan.bin")}
        assert client.post("/jobs", json=body).status_code == 201
        sb.wait_idle(timeout=20)
        [job] = sb.jobs()
        assert job["status"] == "finished", job
        stored = s3.get_object(Bucket=BUCKET, Key="spill/scan.bin")["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == digest
        [file] = by_name(job)["out"]["result"]["files"]
        assert file["filename"] == "scan.bin" and "size" not in file
        got = client.get(file["url"])
        assert hashlib.sha256(got.content).hexdigest() == digest
        spilled = list(sb._backend.spool._dir.iterdir())  # type: ignore[union-attr]
        assert len(spilled) == 1 and spilled[0].stat().st_size == size

        # And back from S3, streamed to disk on the way in.
        assert client.post("/jobs", json={"tasks": {
            "in": {"operation": "import/s3", **s3_fields(moto_url, key="spill/scan.bin")},
            "out": {"operation": "export/url", "input": "in"},
        }}).status_code == 201
        sb.wait_idle(timeout=20)
        [back] = by_name(sb.jobs()[1])["out"]["result"]["files"]
        assert hashlib.sha256(client.get(back["url"]).content).hexdigest() == digest
        spilled = list(sb._backend.spool._dir.iterdir())  # type: ignore[union-attr]
        assert len(spilled) == 2
    assert not any(path.exists() for path in spilled)
    assert (tmp_path / "scan.bin").exists()  # serve_file never deletes the caller's file


def test_300_jobs_from_20_clients_with_delayed_and_duplicated_callbacks(
    tmp_path: Any, receiver: Receiver
) -> None:
    (tmp_path / "in.png").write_bytes(_png())
    faults = Faults(duplicate_callbacks=1, callback_delay_seconds=0.3)
    hook = f"/hook/load-{uuid.uuid4().hex[:8]}"
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sb:
        source = sb.serve_file(tmp_path / "in.png", "in.png")
        statuses: list[int] = []
        lock = threading.Lock()

        def client_run(number: int) -> None:
            with httpx.Client(base_url=sb.url + "/v2", trust_env=False, headers=AUTH,
                              timeout=20) as client:
                for each in range(15):
                    answer = client.post("/jobs", json=_url_job(
                        source, tag=f"load-{number}-{each}", webhook=receiver.url + hook))
                    with lock:
                        statuses.append(answer.status_code)

        started = time.monotonic()
        clients = [threading.Thread(target=client_run, args=(n,)) for n in range(20)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        sb.wait_idle(timeout=20)
        elapsed = time.monotonic() - started

        assert statuses == [201] * 300
        assert sb.job_count() == 300
        listed_at = time.monotonic()
        jobs = sb.jobs()
        assert time.monotonic() - listed_at < 1
        assert {job["status"] for job in jobs} == {"finished"}
        deliveries = sb.deliveries()
        assert len(deliveries) == 600 and {d["status"] for d in deliveries} == {200}
        assert len(receiver.calls_to(hook)) == 600
        with httpx.Client(base_url=sb.url + "/v2", trust_env=False, headers=AUTH) as client:
            page = client.get("/jobs").json()
            assert len(page["data"]) == 100 and page["links"]["next"] is not None
            assert _find_by_tag(client, "load-7-3")["data"][0]["tag"] == "load-7-3"
    assert elapsed < 15, f"300 jobs took {elapsed:.1f}s"
