"""The naming invariants of DESIGN.md as Hypothesis properties, over generated keys: every name
the bridge derives stays under the rule's own prefixes and passes the key checks itself; two
accepted sources never share an output key or an output folder; and the IAM resource patterns
of the S3 write grant for one source (taken from the session policy S3Storage really builds,
matched with IAM's wildcard semantics) reach none of another source's outputs.

Keys come from tests/name_strategies.py. Example counts: 300 for one key, 200 for sets of keys.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import GrantError
from convbridge.model import OutputTarget
from convbridge.names import unsafe_key_reason
from convbridge.rules import Rule
from convbridge.storage.s3 import S3Storage
from tests.name_strategies import BUCKET, RULE, accepted, filenames, keys


class PolicyRecorder:
    """An STS stand-in that keeps the session policy it is asked for (the unit under test is
    the policy; SeaweedFS proves the same grants in tests/integration)."""

    def __init__(self) -> None:
        self.policies: list[dict[str, Any]] = []

    def assume_role(self, **params: Any) -> dict[str, Any]:
        self.policies.append(json.loads(params["Policy"]))
        return {"Credentials": {"AccessKeyId": "AKID", "SecretAccessKey": "secret",
                                "SessionToken": "token", "Expiration": "2030-01-01T00:00:00+00:00"}}


def write_patterns(output_key: str) -> list[str] | None:
    """The object-key patterns of the S3 write grant for ``output_key``; None when S3Storage
    mints no STS grant (the output is relayed)."""
    recorder = PolicyRecorder()
    storage = S3Storage(s3_client=None, sts_client=recorder, grant_role_arn="arn:aws:iam::1:role/g")
    try:
        storage.grant_write(OutputTarget("s3", BUCKET, output_key), 900)
    except GrantError:
        return None
    (statement,) = recorder.policies[0]["Statement"]
    assert statement["Action"] == ["s3:PutObject"]
    arn_prefix = f"arn:aws:s3:::{BUCKET}/"
    assert all(resource.startswith(arn_prefix) for resource in statement["Resource"])
    return [resource[len(arn_prefix):] for resource in statement["Resource"]]


def iam_matches(pattern: str, key: str) -> bool:
    """IAM resource matching: ``*`` any run of characters (``/`` included), ``?`` any one,
    ``${*}`` ``${?}`` ``${$}`` the literal character."""
    regex = "".join(
        re.escape(part[2]) if part.startswith("${") else
        ".*" if part == "*" else "." if part == "?" else re.escape(part)
        for part in re.findall(r"\$\{[*?$]\}|[*?]|[^*?$]+|\$", pattern))
    return re.fullmatch(regex, key, flags=re.DOTALL) is not None


def derived_names(rule: Rule, key: str, filename: str) -> list[tuple[str, str]]:
    return [(rule.outputs_prefix, rule.output_key(key)),
            (rule.outputs_prefix, rule.output_folder(key) + filename),
            (rule.results_prefix, rule.result_key(key)),
            (rule.failures_prefix, rule.failure_key(key)),
            (rule.failures_prefix, rule.failed_source_key(key))]


@settings(max_examples=300, deadline=None)
@given(key=keys, filename=filenames)
def test_every_derived_name_stays_under_its_prefix_and_is_safe_itself(key: str,
                                                                      filename: str) -> None:
    """300 examples."""
    if not accepted(RULE, key):
        return
    for prefix, name in derived_names(RULE, key, filename):
        assert name.startswith(prefix)
        # the derived name passes every check a key must pass: no segment climbs out
        assert unsafe_key_reason(name) is None, (name, unsafe_key_reason(name))


@settings(max_examples=300, deadline=None)
@given(key=keys)
def test_a_write_grant_reaches_its_own_outputs(key: str) -> None:
    """300 examples: the property below would hold vacuously for a grant reaching nothing."""
    if not accepted(RULE, key):
        return
    patterns = write_patterns(RULE.output_key(key))
    if patterns is None:
        assert re.search(r"[*?$]", key) or len(key) > 900, key
        return
    assert any(iam_matches(p, RULE.output_key(key)) for p in patterns)
    assert any(iam_matches(p, RULE.output_folder(key) + "page-1.png") for p in patterns)


@settings(max_examples=200, deadline=None)
@given(sources=st.lists(keys, min_size=2, max_size=8, unique=True), filename=filenames)
def test_distinct_sources_never_share_outputs_and_grants_never_reach_anothers(
        sources: list[str], filename: str) -> None:
    """200 examples of up to 8 keys each."""
    kept = [key for key in sources if accepted(RULE, key)]
    outputs = {key: RULE.output_key(key) for key in kept}
    folders = {key: RULE.output_folder(key) for key in kept}
    assert len(set(outputs.values())) == len(kept)
    for a in kept:
        patterns = write_patterns(outputs[a])
        for b in kept:
            if a == b:
                continue
            assert not outputs[b].startswith(folders[a])
            assert not folders[b].startswith(folders[a])
            # a moved source never takes another source's failure report name
            assert RULE.failed_source_key(a) != RULE.failure_key(b)
            for target in (outputs[b], folders[b] + filename):
                assert not any(iam_matches(p, target) for p in patterns or []), (a, b, target)


def test_without_the_folder_refusal_one_grant_would_reach_anothers_outputs() -> None:
    """Why Rule.naming_conflict exists: the properties above fail without it."""
    first, second = "inbox/a.png", "inbox/a.png.pdf/b.png"
    patterns = write_patterns(RULE.output_key(first))
    assert patterns is not None
    assert any(iam_matches(p, RULE.output_key(second)) for p in patterns)
    assert accepted(RULE, first) and not accepted(RULE, second)


def test_the_iam_matcher_reads_wildcards_and_escapes() -> None:
    assert iam_matches("outbox/a.pdf/*", "outbox/a.pdf/x/y")
    assert iam_matches("outbox/?.pdf", "outbox/b.pdf")
    assert not iam_matches("outbox/a${*}.pdf", "outbox/ab.pdf")
    assert iam_matches("outbox/a${*}.pdf", "outbox/a*.pdf")
    assert not iam_matches("outbox/a.pdf", "outbox/a.pdf/x")
