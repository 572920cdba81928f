"""Rules file loading, validation and matching."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import convbridge
from convbridge.errors import RulesError
from convbridge.model import ObjectRef
from convbridge.rules import load_rules, parse_rules

GOOD = textwrap.dedent("""\
    version: 1
    rules:
      - name: images-to-pdf
        match: {storage: s3, location: bucket-a, prefix: inbox/, suffixes: [.png, .JPG]}
        convert: {to: pdf, options: {quality: 80}}
        provider: cloudconvert
        outputs: outbox/
        results: results/
        failures: failures/
      - name: everything-else
        match: {storage: s3, location: bucket-a, prefix: inbox/}
        convert: {to: webp}
        provider: cloudconvert
        read_grant: sts_session
        max_size_bytes: 1000
        outputs: out2/
        results: res2/
        failures: fail2/
""")


def ref(key: str, location: str = "bucket-a", **kw: object) -> ObjectRef:
    return ObjectRef(storage="s3", location=location, key=key, **kw)  # type: ignore[arg-type]


def test_first_matching_rule_wins_and_suffixes_are_case_insensitive() -> None:
    rules = parse_rules(GOOD)
    assert rules.match(ref("inbox/a/b.png")).name == "images-to-pdf"  # type: ignore[union-attr]
    assert rules.match(ref("inbox/a/B.jpg")).name == "images-to-pdf"  # type: ignore[union-attr]
    assert rules.match(ref("inbox/doc.docx")).name == "everything-else"  # type: ignore[union-attr]


def test_nothing_matches_other_buckets_or_prefixes() -> None:
    rules = parse_rules(GOOD)
    assert rules.match(ref("inbox/a.png", location="bucket-b")) is None
    assert rules.match(ref("elsewhere/a.png")) is None
    assert rules.match(ObjectRef(storage="gcs", location="bucket-a", key="inbox/a.png")) is None


def test_output_record_and_failure_keys_follow_the_design() -> None:
    rule = parse_rules(GOOD).get("images-to-pdf")
    assert rule is not None
    assert rule.output_key("inbox/a/b.docx") == "outbox/a/b.docx.pdf"
    assert rule.output_folder("inbox/a/b.docx") == "outbox/a/b.docx.pdf/"
    assert rule.result_key("inbox/a/b.docx") == "results/a/b.docx.json"
    assert rule.failure_key("inbox/a/b.docx") == "failures/a/b.docx.json"
    assert rule.failed_source_key("inbox/a/b.docx") == "failures/a/b.docx"
    assert rule.output_key("inbox/noext") == "outbox/noext.pdf"
    assert rule.options == {"quality": 80}


def test_the_bridges_own_writes_never_match() -> None:
    rules = parse_rules(GOOD.replace("prefix: inbox/}", "prefix: ''}"))
    assert rules.match(ref("outbox/a.png")) is None
    assert rules.match(ref("results/a.png.json")) is None
    assert rules.match(ref("inbox/a.png", metadata={"convbridge-output": "x"})) is None
    assert rules.match(ref("inbox/a.png")) is not None


def test_a_bad_file_lists_every_problem() -> None:
    bad = textwrap.dedent("""\
        version: 1
        rules:
          - name: one
            match: {storage: s4, location: b, prefix: /abs/}
            convert: {to: pfd}
            provider: nope
            outputs: out
            results: out
            colour: blue
          - name: one
            match: {storage: s3, location: b, prefix: in/}
            convert: {to: pdf}
            provider: cloudconvert
            outputs: out/
            results: res/
            failures: res/
    """)
    with pytest.raises(RulesError) as caught:
        parse_rules(bad, "rules.yaml")
    problems = "\n".join(caught.value.problems)
    for expected in ("unknown field 'colour'", "storage: 's4'", "match.prefix",
                     "unknown output format 'pfd'", "provider: 'nope'", "outputs: 'out'",
                     "failures: required", "must be different prefixes"):
        assert expected in problems, expected
    assert len(caught.value.problems) >= 8
    assert "rules.yaml" in str(caught.value)


def test_watching_inside_a_written_prefix_is_an_error() -> None:
    text = GOOD.replace("prefix: inbox/, suffixes", "prefix: outbox/x/, suffixes")
    with pytest.raises(RulesError, match="inside 'outbox/'"):
        parse_rules(text)


@pytest.mark.parametrize("text", ["", "[1, 2]", "version: 2\nrules: []", "{{{"])
def test_malformed_documents_are_rules_errors(text: str) -> None:
    with pytest.raises(RulesError):
        parse_rules(text)


def test_load_from_path_ssm_and_s3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    assert len(load_rules(str(path)).rules) == 2
    assert len(load_rules("ssm:/convbridge/rules", read_ssm=lambda name: GOOD).rules) == 2
    seen = []

    def read_s3(bucket: str, key: str) -> str:
        seen.append((bucket, key))
        return GOOD

    assert len(load_rules("s3://cfg/rules/prod.yaml", read_s3=read_s3).rules) == 2
    assert seen == [("cfg", "rules/prod.yaml")]


def test_sources_differing_only_in_extension_get_their_own_outputs() -> None:
    rule = parse_rules(GOOD).get("images-to-pdf")
    assert rule is not None
    assert rule.output_key("inbox/a.png") == "outbox/a.png.pdf"
    assert rule.output_key("inbox/a.jpg") == "outbox/a.jpg.pdf"


@pytest.mark.parametrize("key", ["inbox/a/b.pdf/c.png", "inbox/x.PDF/y/c.png"])
def test_a_folder_named_like_an_output_is_refused(key: str) -> None:
    rule = parse_rules(GOOD).get("images-to-pdf")
    assert rule is not None
    reason = rule.naming_conflict(key)
    assert reason is not None and "named like an output" in reason


@pytest.mark.parametrize("key", ["inbox/a/b.pdf", "inbox/a.pdfx/c.png", "inbox/pdf/c.png"])
def test_other_folders_and_names_are_no_conflict(key: str) -> None:
    rule = parse_rules(GOOD).get("images-to-pdf")
    assert rule is not None
    assert rule.naming_conflict(key) is None


def _two_rules(second: str) -> str:
    return GOOD.split("  - name: everything-else")[0] + textwrap.indent(
        textwrap.dedent(second), "  ")


def test_rules_sharing_outputs_but_watching_different_prefixes_are_refused() -> None:
    text = _two_rules("""\
        - name: other-inbox
          match: {storage: s3, location: bucket-a, prefix: inbox2/}
          convert: {to: pdf}
          provider: cloudconvert
          outputs: outbox/
          results: res2/
          failures: fail2/
    """)
    with pytest.raises(RulesError, match="must watch the same prefix and convert to the same"):
        parse_rules(text)


def test_rules_sharing_outputs_but_converting_to_other_formats_are_refused() -> None:
    text = _two_rules("""\
        - name: jpgs
          match: {storage: s3, location: bucket-a, prefix: inbox/, suffixes: [.gif]}
          convert: {to: png}
          provider: cloudconvert
          outputs: outbox/
          results: results/
          failures: failures/
    """)
    with pytest.raises(RulesError, match="same format"):
        parse_rules(text)


@pytest.mark.parametrize(("outputs", "results"), [("outbox/x/", "res2/"),
                                                  ("out2/", "outbox/"),
                                                  ("out2/", "outbox/records/")])
def test_rules_with_nested_or_mixed_written_prefixes_are_refused(outputs: str,
                                                                 results: str) -> None:
    text = _two_rules(f"""\
        - name: gifs
          match: {{storage: s3, location: bucket-a, prefix: inbox/, suffixes: [.gif]}}
          convert: {{to: pdf}}
          provider: cloudconvert
          outputs: {outputs}
          results: {results}
          failures: fail2/
    """)
    with pytest.raises(RulesError, match="overlap"):
        parse_rules(text)


def test_rules_sharing_every_prefix_the_same_way_load() -> None:
    text = _two_rules("""\
        - name: gifs
          match: {storage: s3, location: bucket-a, prefix: inbox/, suffixes: [.gif]}
          convert: {to: pdf, options: {quality: 50}}
          provider: freeconvert
          outputs: outbox/
          results: results/
          failures: failures/
    """)
    assert len(parse_rules(text).rules) == 2


def test_one_rules_prefixes_inside_one_another_are_refused() -> None:
    text = GOOD.replace("results: results/", "results: outbox/records/")
    with pytest.raises(RulesError, match="none inside another"):
        parse_rules(text)


@pytest.mark.parametrize("suffixes", ["", ", suffixes: [.png, .json]"])
def test_moving_sources_that_may_be_json_is_refused(suffixes: str) -> None:
    text = GOOD.split("  - name: everything-else")[0].replace(
        ", suffixes: [.png, .JPG]", suffixes) + "    on_failure: move\n"
    with pytest.raises(RulesError, match="exclude '.json'"):
        parse_rules(text)


def test_parsing_rules_that_name_every_storage_imports_no_cloud_sdk() -> None:
    """A function parses every rule at cold start; the storages its rules name but it never
    talks to cost it no SDK import (``swept`` is read from the adapter class)."""
    code = """
import sys
from convbridge.rules import parse_rules
rules = parse_rules('''
version: 1
rules:
''' + ''.join(f'''
  - name: from-{storage}
    match: {{storage: {storage}, location: drop, prefix: inbox/, suffixes: [.png]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
''' for storage in ("azure_blob", "gcs", "sftp")))
assert [r.storage for r in rules.rules] == ["azure_blob", "gcs", "sftp"]
print(sorted(m for m in sys.modules
             if m.split(".")[0] in {"azure", "google", "paramiko", "botocore", "boto3"}))
"""
    package_root = Path(convbridge.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root)},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
