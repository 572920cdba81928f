"""``convbridge explain URI``: the rule, names, grants, route and provider payload for one
object, offline, with no credential in what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convbridge.cli import main
from convbridge.explain import parse_uri
from convbridge.model import ObjectRef

RULES = """
version: 1
rules:
  - name: photos
    match: {storage: s3, location: my-bucket, prefix: inbox/, suffixes: [.png]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
  - name: blobs
    match: {storage: azure_blob, location: acct/uploads, prefix: in/, suffixes: [.docx]}
    convert: {to: pdf}
    provider: freeconvert
    read_grant: sas
    outputs: out/
    results: res/
    failures: fail/
  - name: drop
    match: {storage: sftp, location: sftp.example.com, prefix: drop/, suffixes: [.png]}
    convert: {to: pdf}
    provider: freeconvert
    outputs: out/
    results: res/
    failures: fail/
"""
#: credentials of the environment: explain must never mint with them, nor print them
ENVIRONMENT_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAEXPLAINSHOULDNOTSHOW",
                       "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-explain-must-not-print",
                       "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXPLAINTOKEN"}


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in ENVIRONMENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return str(path)


def explain(capsys: pytest.CaptureFixture[str], uri: str, rules: str) -> tuple[int, str]:
    code = main(["explain", uri, "--rules", rules])
    out, err = capsys.readouterr()
    return code, out + err


def payload(out: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(out[out.index("\n{") + 1:])
    return document


def test_a_matching_key_shows_rule_names_grants_route_and_payload(
        rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = explain(capsys, "s3://my-bucket/inbox/a/b.png", rules)
    assert code == 0, out
    for line in ("rule: photos (s3://my-bucket/inbox/* -> pdf via cloudconvert)",
                 "output: outbox/a/b.png.pdf", "result record: results/a/b.png.json",
                 "failure report: failures/a/b.png.json", "route: native",
                 "read grant: presigned_url: signed URL for the one object (inbox/a/b.png), 900 s",
                 "write grant: sts_session: STS session creds scoped to the job's output key "
                 "(outbox/a/b.png.pdf and outbox/a/b.png.pdf/*), 3600 s",
                 "job document sent to cloudconvert (https://api.cloudconvert.com/v2):"):
        assert line in out
    tasks = payload(out)["tasks"]
    assert isinstance(tasks, dict)
    assert tasks["export-output"]["operation"] == "export/s3"
    assert tasks["export-output"]["key"] == "outbox/a/b.png.pdf"
    assert tasks["export-output"]["secret_access_key"] == "<redacted>"
    assert tasks["import-source"]["operation"] == "import/url"
    assert tasks["convert"]["input_format"] == "png"


def test_a_non_matching_key_says_why_for_each_rule(
        rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = explain(capsys, "s3://my-bucket/elsewhere/b.png", rules)
    assert code == 1
    assert "no rule converts it:" in out
    assert "  photos: watches prefix 'inbox/'" in out
    assert "  blobs: watches azure_blob, not s3" in out
    code, out = explain(capsys, "s3://my-bucket/inbox/b.gif", rules)
    assert code == 1
    assert "  photos: converts only .png" in out
    code, out = explain(capsys, "s3://my-bucket/outbox/b.png", rules)
    assert "  photos: the key is under one of its outputs, results or failures prefixes" in out


def test_azure_locations_are_account_and_container(
        rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_uri("azure://acct/uploads/in/a.docx") == ObjectRef("azure_blob", "acct/uploads",
                                                                    "in/a.docx")
    code, out = explain(capsys, "azure://acct/uploads/in/report.docx", rules)
    assert code == 0, out
    assert "rule: blobs" in out and "read grant: sas: SAS for one blob" in out
    tasks = payload(out)["tasks"]
    assert isinstance(tasks, dict)
    assert tasks["import-source"]["sas_token"] == "<redacted>"


def test_a_route_that_cannot_work_is_shown_refused(
        rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = explain(capsys, "sftp://sftp.example.com/drop/scan.png", rules)
    assert code == 1
    assert "rule: drop" in out
    assert "UPLOAD_UNSUPPORTED" in out


@pytest.mark.parametrize("uri", ["s3://my-bucket/inbox/a/b.png",
                                 "azure://acct/uploads/in/report.docx"])
def test_no_secret_is_printed(rules: str, capsys: pytest.CaptureFixture[str], uri: str) -> None:
    _, out = explain(capsys, uri, rules)
    for value in ENVIRONMENT_SECRETS.values():
        assert value not in out
    # nothing was signed: no SigV4 query, no SAS signature
    assert "X-Amz-Signature" not in out and "sig=" not in out
    assert "Bearer" not in out


@pytest.mark.parametrize("uri", ["ftp://host/a.png", "s3://bucket-only", "azure://acct/a.png"])
def test_a_bad_uri_is_a_usage_error(rules: str, uri: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["explain", uri, "--rules", rules])
    assert exited.value.code == 2
