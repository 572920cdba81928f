"""The registries are the one list of adapter names: built-ins, ``register`` calls and entry
points, and everything that lists names (rules, settings, routes) reads them."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import ClassVar

import pytest

from convbridge import _registry
from convbridge._registry import Registry
from convbridge.errors import ConfigError, RulesError
from convbridge.providers import PROVIDERS
from convbridge.providers.cloudconvert import CloudConvert
from convbridge.rules import parse_rules
from convbridge.settings import Settings


class Extra(CloudConvert):
    name: ClassVar[str] = "extra"
    default_base_url: ClassVar[str | None] = "https://api.extra.example/v2"


class Misnamed(CloudConvert):
    name: ClassVar[str] = "something-else"


HERE = __name__
ENV = {"CONVBRIDGE_RULES": "r.yaml", "CONVBRIDGE_CONTEXT_SECRET": "c",
       "CONVBRIDGE_IDEMPOTENCY_TABLE": "t"}
RULES = """
version: 1
rules:
  - name: r
    match: {storage: s3, location: b, prefix: in/}
    convert: {to: pdf}
    provider: extra
    outputs: out/
    results: res/
    failures: fail/
"""


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *points: EntryPoint) -> list[str]:
    asked: list[str] = []

    def entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        return [p for p in points if p.group == group]

    monkeypatch.setattr(_registry, "entry_points", entry_points)
    return asked


def test_register_adds_a_name_imported_on_first_use() -> None:
    registry: Registry[CloudConvert] = Registry("provider", {})
    registry.register("extra", f"{HERE}:Extra")
    assert registry.names() == ["extra"] and "extra" in registry
    assert registry.load("extra") is Extra


def test_register_refuses_a_taken_name_unless_replacing() -> None:
    registry: Registry[CloudConvert] = Registry("provider", {"extra": (f"{HERE}:Extra", None)})
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("extra", f"{HERE}:Misnamed")
    with pytest.raises(ConfigError, match="is not 'module:Class'"):
        registry.register("other", "no_colon_here")
    registry.register("extra", f"{HERE}:Extra", replace=True)
    assert registry.load("extra") is Extra


def test_a_class_calling_itself_another_name_is_refused() -> None:
    registry: Registry[CloudConvert] = Registry("provider", {"extra": (f"{HERE}:Misnamed", None)})
    with pytest.raises(ConfigError, match="calls itself 'something-else'"):
        registry.load("extra")


def test_entry_points_are_read_once_and_imported_only_when_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_entry_points(
        monkeypatch,
        EntryPoint("extra", f"{HERE}:Extra", "convbridge.providers"),
        EntryPoint("missing", "convbridge_no_such_module:Thing", "convbridge.providers"),
        EntryPoint("cloudconvert", f"{HERE}:Misnamed", "convbridge.providers"),
        EntryPoint("s3_like", f"{HERE}:Extra", "convbridge.storages"),
    )
    registry: Registry[CloudConvert] = Registry(
        "provider", {"cloudconvert": ("convbridge.providers.cloudconvert:CloudConvert", None)},
        group="convbridge.providers")
    assert asked == []  # nothing is read before the first question
    # an entry point cannot take a built-in name; a missing module is not imported yet
    assert registry.names() == ["cloudconvert", "extra", "missing"]
    assert registry.load("extra") is Extra and registry.load("cloudconvert") is CloudConvert
    with pytest.raises(ConfigError, match="needs convbridge_no_such_module"):
        registry.load("missing")
    assert asked == ["convbridge.providers"]


def test_an_unknown_name_lists_the_known_ones() -> None:
    registry: Registry[CloudConvert] = Registry("provider", {"extra": (f"{HERE}:Extra", None)})
    with pytest.raises(ConfigError, match="unknown provider 'nope'; known: extra"):
        registry.load("nope")


def test_a_registered_provider_is_valid_in_rules_and_its_url_override_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RulesError, match="'extra' is not one of"):
        parse_rules(RULES)
    monkeypatch.setattr(PROVIDERS, "_entries", {**PROVIDERS._entries,
                                                "extra": (f"{HERE}:Extra", None)})
    assert parse_rules(RULES).rules[0].provider == "extra"
    settings = Settings.from_env({**ENV, "CONVBRIDGE_EXTRA_URL": "http://127.0.0.1:9/v2"})
    assert settings.base_url("extra") == "http://127.0.0.1:9/v2"
    assert Settings.from_env(ENV).base_url("extra") == "https://api.extra.example/v2"
    with pytest.raises(ConfigError, match="is not an http"):
        Settings.from_env({**ENV, "CONVBRIDGE_EXTRA_URL": "ftp://x"})


def test_every_registered_storage_declares_what_it_can_mint() -> None:
    from convbridge.storage import STORAGES

    for name in STORAGES.names():
        storage = STORAGES.load(name)
        assert storage.relay_read_kind in storage.read_grant_kinds | {"upload"}, name
        for provider in map(PROVIDERS.load, PROVIDERS.names()):
            # a provider never asks a storage for a read grant it cannot mint
            assert provider.native_imports.get(name, frozenset()) <= (
                storage.read_grant_kinds), (provider.name, name)
