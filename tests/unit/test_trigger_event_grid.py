"""How the Event Grid trigger answers, without servers: a stub bridge stands in for the real one,
so each test shows one decision (who is let in, what a handshake gets, when Event Grid is asked
to deliver again). The whole flow over HTTP is tests/integration/test_azure_flow.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from convbridge.errors import SecretError
from convbridge.model import ObjectRef
from convbridge.pipeline import Submission
from convbridge.triggers import event_grid

CODE = "c" * 40
EVENTS = Path(__file__).resolve().parents[1] / "events"


class Secret:
    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def optional(self, key: str) -> str | None:
        return self._fields.get(key)

    def field(self, key: str) -> str:
        if key not in self._fields:  # as convbridge.secrets.SecretValue does
            raise SecretError(f"secret has no field {key!r}")
        return self._fields[key]


@dataclass
class Secrets:
    fields: dict[str, str] | None = field(default_factory=lambda: {"code": CODE})

    def get(self, name: str) -> Secret:
        if self.fields is None:
            raise SecretError(f"cannot read secret {name}")
        return Secret(self.fields)


class Claims:
    def register_lambda_context(self, context: Any) -> None:
        pass


class Settings:
    max_callback_bytes = 4096

    def value(self, name: str, default: str | None = None) -> str | None:
        return "convbridge/event-grid" if name == "EVENT_GRID_SECRET" else default


@dataclass
class StubBridge:
    secrets: Secrets = field(default_factory=Secrets)
    settings: Settings = field(default_factory=Settings)
    claims: Claims = field(default_factory=Claims)


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every submit_all call as {objects, final_attempt}; each object comes back "submitted"
    unless its key says which status to report."""
    calls: list[dict[str, Any]] = []

    def submit_all(bridge: Any, refs: Any, *, final_attempt: bool = True) -> list[Submission]:
        refs = list(refs)
        calls.append({"objects": refs, "final_attempt": final_attempt})
        return [Submission(r, r.key.split("/")[0] if r.key.startswith(("retry/", "error/"))
                           else "submitted") for r in refs]

    monkeypatch.setattr(event_grid, "submit_all", submit_all)
    return calls


@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> StubBridge:
    stub = StubBridge()
    monkeypatch.setattr(event_grid, "bridge", lambda: stub)
    return stub


def answer(body: object, *, query: str = f"code={CODE}", method: str = "POST",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, sent, text = event_grid.answer_delivery(method=method, headers=headers or {},
                                                    query=query, body=raw)
    return status, sent, json.loads(text) if text else None


def created(key: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = json.loads(
        (EVENTS / "event_grid_blob_created.json").read_text())
    events[0]["data"]["url"] = f"https://convbridgeuploads.blob.core.windows.net/uploads/{key}"
    return events[0]


def test_a_good_delivery_is_submitted_and_answered_200(bridge: StubBridge,
                                                       submitted: list[dict[str, Any]]) -> None:
    status, headers, body = answer([created("inbox/a.png")])
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["counts"] == {"submitted": 1}
    (call,) = submitted
    assert call["objects"] == [ObjectRef("azure_blob", "convbridgeuploads/uploads", "inbox/a.png",
                                         "0x8DC73F5A2B9C1D4", 48213)]
    assert call["final_attempt"] is False


@pytest.mark.parametrize("key", ["retry/a.png", "error/a.png"])
def test_trouble_worth_a_redelivery_is_answered_503(bridge: StubBridge,
                                                    submitted: list[dict[str, Any]],
                                                    key: str) -> None:
    status, _, body = answer([created("inbox/ok.png"), created(key)])
    assert status == 503 and body["counts"] == {"submitted": 1, key.split("/")[0]: 1}


@pytest.mark.parametrize(("count", "final"), [("0", False), ("3", False), ("4", True),
                                              ("17", True), ("junk", False)])
def test_the_last_delivery_reports_instead_of_retrying(bridge: StubBridge,
                                                       submitted: list[dict[str, Any]],
                                                       count: str, final: bool) -> None:
    answer([created("inbox/a.png")], headers={"aeg-delivery-count": count})
    assert submitted[0]["final_attempt"] is final


@pytest.mark.parametrize("query", ["", "code=", f"code={CODE[:-1]}", f"code={CODE}x",
                                   f"Code={CODE}", f"code={CODE}&code={CODE}",
                                   f"key={CODE}"])
def test_anything_but_the_one_right_code_is_401_and_starts_nothing(
        bridge: StubBridge, submitted: list[dict[str, Any]], query: str) -> None:
    for method in ("POST", "OPTIONS"):
        status, headers, _ = answer([created("inbox/a.png")], query=query, method=method,
                                    headers={"webhook-request-origin": "eventgrid.azure.net"})
        assert status == 401 and "WebHook-Allowed-Origin" not in headers
    assert submitted == []


def test_the_code_may_be_a_plain_string_secret(bridge: StubBridge,
                                               submitted: list[dict[str, Any]]) -> None:
    bridge.secrets.fields = {"value": CODE}
    assert answer([created("inbox/a.png")])[0] == 200


@pytest.mark.parametrize("fields", [{"code": "short"}, {}, None])
def test_a_missing_or_weak_code_secret_is_503_not_an_open_door(
        bridge: StubBridge, submitted: list[dict[str, Any]],
        fields: dict[str, str] | None) -> None:
    bridge.secrets.fields = fields
    status, _, body = answer([created("inbox/a.png")], query="code=short")
    assert status == 503 and body == {"error": "temporarily unavailable"}
    assert submitted == []


def test_an_unset_code_setting_is_503(bridge: StubBridge, submitted: list[dict[str, Any]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings, "value", lambda self, name, default=None: default)
    assert answer([created("inbox/a.png")])[0] == 503
    assert submitted == []


def test_handshakes(bridge: StubBridge, submitted: list[dict[str, Any]]) -> None:
    validation = json.loads((EVENTS / "event_grid_subscription_validation.json").read_text())
    assert answer(validation)[2] == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    status, headers, _ = answer(b"", method="OPTIONS",
                                headers={"webhook-request-origin": "eventgrid.azure.net"})
    assert status == 200 and headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert answer(b"", method="OPTIONS")[0] == 400
    assert submitted == []


@pytest.mark.parametrize(("body", "method", "status"), [
    (b"{not json", "POST", 400),
    (b"[" * 100000, "POST", 400),  # nested too deep for the parser
    (b"[" + b" " * 5000 + b"]", "POST", 413),
    (b"[]", "GET", 405),
])
def test_bodies_and_methods_refused(bridge: StubBridge, submitted: list[dict[str, Any]],
                                    body: bytes, method: str, status: int) -> None:
    bridge.settings.max_callback_bytes = 200000 if body.startswith(b"[[") else 4096
    assert answer(body, method=method)[0] == status
    assert submitted == []
