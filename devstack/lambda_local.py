"""Run the deployed handlers locally, unchanged: load ``functions/<name>/app.py``, give it a
Lambda-shaped context, and serve HTTP handlers behind a local Function URL.

The Function URL server turns each request into the payload-2.0 event AWS would deliver
(lower-cased headers, raw path and query, body base64-encoded when it is not text) and the
handler's answer back into HTTP, so the webhook is exercised over real HTTP.
"""

from __future__ import annotations

import base64
import importlib.util
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def load_function(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` as its own module, as Lambda would."""
    path = ROOT / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"convbridge_function_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class LocalContext:
    """The attributes of a Lambda context object that handlers and Powertools read."""

    function_name: str = "convbridge-local"
    memory_limit_in_mb: int = 512
    timeout_seconds: float = 60.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_seconds - (time.monotonic() - self.started)
        return max(0, int(left * 1000))


def function_url_event(method: str, target: str, headers: dict[str, str], body: bytes,
                       *, force_base64: bool = False) -> dict[str, Any]:
    parts = urlsplit(target)
    try:
        text = body.decode("utf-8")
        is_text = not force_base64
    except UnicodeDecodeError:
        is_text = False
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": {k.lower(): v for k, v in headers.items()},
        "queryStringParameters": dict(
            p.split("=", 1) if "=" in p else (p, "") for p in parts.query.split("&") if p
        ) or None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": "localhost",
            "http": {"method": method, "path": parts.path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent", "")},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": int(time.time() * 1000),
        },
        "body": text if is_text else base64.b64encode(body).decode(),
        "isBase64Encoded": not is_text,
    }


class FunctionUrlServer:
    """A local HTTPS-less Function URL in front of a handler, on a free loopback port."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0,
                 force_base64: bool = False) -> None:
        self._handler = handler
        self._force_base64 = force_base64
        self.invocations = 0
        outer = self

        class RequestHandler(BaseHTTPRequestHandler):
            def _invoke(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                event = function_url_event(self.command, self.path, dict(self.headers.items()),
                                           body, force_base64=outer._force_base64)
                outer.invocations += 1
                answer = outer._handler(event, LocalContext())
                payload = answer.get("body") or ""
                data = (base64.b64decode(payload) if answer.get("isBase64Encoded")
                        else str(payload).encode())
                self.send_response(int(answer.get("statusCode", 200)))
                for key, value in (answer.get("headers") or {}).items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_OPTIONS = _invoke

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), RequestHandler)
        # a short poll interval makes stop() quick; the default 0.5 s adds up across tests
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FunctionUrlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FunctionUrlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SqsPoller:
    """Lambda's SQS event source mapping, locally: receive a batch, invoke the handler with the
    SQS event AWS would build, delete what succeeded, and let reported failures come back
    after their visibility timeout (shortened here so tests and the demo stay quick)."""

    def __init__(self, sqs: Any, queue_url: str, handler: Handler, *, batch_size: int = 10,
                 retry_after_seconds: int = 1) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._handler = handler
        self._batch_size = batch_size
        self._retry_after = retry_after_seconds
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.invocations = 0
        self.failures = 0
        name = queue_url.rstrip("/").rsplit("/", 1)[-1]
        self._arn = f"arn:aws:sqs:us-east-1:123456789012:{name}"

    def start(self) -> SqsPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def idle(self) -> bool:
        if self._busy.is_set():
            return False
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (int(attributes["ApproximateNumberOfMessages"]) == 0
                and int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 0
                and not self._busy.is_set())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._busy.set()
            try:
                answer = self._sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=self._batch_size,
                    WaitTimeSeconds=0, AttributeNames=["All"], MessageAttributeNames=["All"],
                    VisibilityTimeout=30,
                )
                messages = answer.get("Messages", [])
                if messages:
                    self._deliver(messages)
            finally:
                self._busy.clear()
            if not messages:
                self._stop.wait(0.05)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        event = {"Records": [self._record(m) for m in messages]}
        self.invocations += 1
        try:
            answer = self._handler(event, LocalContext(timeout_seconds=120))
            failed = {f["itemIdentifier"] for f in (answer or {}).get("batchItemFailures", [])}
        except Exception:  # a crashed invocation fails the whole batch, as on Lambda
            failed = {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] in failed:
                self.failures += 1
                self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=self._retry_after)
            else:
                self._sqs.delete_message(QueueUrl=self.queue_url,
                                         ReceiptHandle=message["ReceiptHandle"])

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._arn,
            "awsRegion": "us-east-1",
        }
