"""Rules file loading, validation and matching."""

from __future__ import annotations

import textwrap

import pytest

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
    assert rule.output_key("inbox/a/b.docx") == "outbox/a/b.pdf"
    assert rule.result_key("inbox/a/b.docx") == "results/a/b.docx.json"
    assert rule.failure_key("inbox/a/b.docx") == "failures/a/b.docx.json"
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
