"""Generated object keys for the naming property tests (tests/unit/test_name_properties.py)
and their samples against the enforcing servers: drawn from a small alphabet rich in trouble
(dots, slashes, backslashes, output-like folder names, bidi and zero-width characters,
full-width dots and solidi, IAM wildcards, surrogates, noncharacters) mixed with any Unicode,
so that generated sets of keys often share structure.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from convbridge.model import ObjectRef
from convbridge.names import unsafe_filename_reason, unsafe_key_reason
from convbridge.rules import Rule, parse_rules

BUCKET = "convbridge-names"
RULES = f"""\
version: 1
rules:
  - name: images
    match: {{storage: s3, location: {BUCKET}, prefix: inbox/, suffixes: [.png, .jpg]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
    on_failure: move
"""
RULE = parse_rules(RULES).rules[0]

TOKENS = [
    "a", "b", "c", ".", "..", "/", "//", "\\", "..\\", ".pdf", ".PDF", ".png", ".jpg", ".json",
    " ", "-", "\u202e", "\u200b", "\u200f", "\ufeff", "\u2066", "\uff0e", "\u2024", "\u2025",
    "\uff0f", "\uff3c", "\u2028", "*", "?", "$", "${*}", "\ud800", "\ufdd0", "\U0010ffff",
    "x" * 200,
]
token = st.one_of(st.sampled_from(TOKENS), st.characters(exclude_categories=()))
tail = st.lists(token, max_size=10).map("".join)
#: names without the refused classes, so that sets of keys hold several accepted sources
plain = st.lists(st.sampled_from(["a", "b", ".", "-", " ", ".png", ".pdf"]), min_size=1,
                 max_size=4).map("".join)
#: folder names, often ones that look like another source's name or output
folder = st.one_of(tail, plain, st.sampled_from(["a", "a.png", "a.png.pdf", "a.PNG.PDF", "b.pdf"]))
extension = st.sampled_from([".png", ".jpg", ".PNG", ".pdf", ".json", ""])
keys = st.builds(lambda folders, name, ext: "inbox/" + "".join(f"{f}/" for f in folders)
                 + name + ext,
                 st.lists(folder, max_size=3), st.one_of(plain, tail), extension)
filenames = st.lists(token, min_size=1, max_size=6).map("".join).filter(
    lambda name: unsafe_filename_reason(name) is None)


def accepted(rule: Rule, key: str) -> bool:
    """What ``submit`` lets through to a job: a safe key the rule wants, named unambiguously."""
    return (unsafe_key_reason(key) is None and rule.wants(ObjectRef("s3", BUCKET, key))
            and rule.naming_conflict(key) is None)


#: keys a job starts for and whose outputs can get an STS grant (no IAM wildcard characters,
#: short enough for a session policy): what the samples on the real servers need
grantable_keys = keys.filter(
    lambda key: accepted(RULE, key) and not re.search(r"[*?$]", key) and len(key) < 400)


def _near(key: str) -> st.SearchStrategy[str]:
    """Keys that used to collide with ``key``: in a folder named after it, or its twin with
    another extension."""
    stem = key.rpartition(".")[0]
    return st.one_of(st.builds(lambda name: f"{stem}/{name}.png", plain),
                     st.builds(lambda name: f"{key}/{name}.png", plain),
                     st.just(f"{stem}.jpg"), grantable_keys)


#: two different keys that both start jobs, often neighbours under the old naming
grantable_pairs = grantable_keys.flatmap(
    lambda a: st.tuples(st.just(a), _near(a).filter(
        lambda b: b != a and accepted(RULE, b) and not re.search(r"[*?$]", b))))
