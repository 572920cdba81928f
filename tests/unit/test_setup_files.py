"""The files an operator starts from: the example rules file, the licence and the version."""

from __future__ import annotations

from pathlib import Path

from convbridge.routes import capability_table
from convbridge.rules import STORAGE_NAMES, load_rules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RULES = ROOT / "rules.example.yaml"


def test_the_example_rules_file_loads_with_one_rule_per_storage() -> None:
    rules = load_rules(str(EXAMPLE_RULES)).rules
    assert sorted(rule.storage for rule in rules) == sorted(STORAGE_NAMES)


def test_every_example_rule_names_a_provider_that_can_take_its_files() -> None:
    # cloudconvert_v1, freeconvert and onlineconvert take no upload: an SFTP rule naming one
    # would turn every file into a failure report.
    refused = {(route.provider, route.storage) for route in capability_table()
               if not route.takes_uploads and any(h.kind == "upload" for h in route.imports)}
    assert refused, "no refused pair at all: the check below would prove nothing"
    for rule in load_rules(str(EXAMPLE_RULES)).rules:
        assert (rule.provider, rule.storage) not in refused, rule.name
