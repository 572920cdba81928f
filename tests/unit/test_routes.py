"""`convbridge routes`: the capability table, and the promise behind it that no provider is
handed a long-lived key unless the rule opts in."""

from __future__ import annotations

import pytest

from convbridge import routes
from convbridge.cli import main
from convbridge.errors import ConfigError, ProviderRejected
from convbridge.planner import ACCOUNT_GRANT_KINDS, plan_route, refuse_unsent_input
from convbridge.providers import PROVIDERS
from convbridge.rules import READ_GRANT_KINDS
from convbridge.storage import STORAGES


def rows(output: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(provider, storage) -> [(import cell, export cell)], continuation lines included."""
    lines = output.splitlines()
    header = lines[0]
    starts = [header.index("storage"), header.index("import:"), header.index("export")]
    table: dict[tuple[str, str], list[tuple[str, str]]] = {}
    current = ("", "")
    for line in lines[1:]:
        if not line.strip():
            break
        provider, storage = line[:starts[0]].strip(), line[starts[0]:starts[1]].strip()
        if provider:
            current = (provider, storage)
        table.setdefault(current, []).append((line[starts[1]:starts[2]].strip(),
                                              line[starts[2]:].strip()))
    return table


def test_the_command_prints_every_provider_and_storage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes"]) == 0
    table = rows(capsys.readouterr().out)
    assert set(table) == {(p, s) for p in PROVIDERS.names() for s in STORAGES.names()}


def test_the_table_says_what_each_provider_is_handed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["routes"])
    table = rows(capsys.readouterr().out)
    relay = "relay: the bridge writes"
    assert table[("freeconvert", "s3")] == [("signed URL for the one object", relay)]
    assert table[("freeconvert", "azure_blob")] == [
        ("signed URL for the one object", "create-only SAS for the output blob"),
        ("SAS for one blob (read_grant: sas)", "")]
    assert table[("onlineconvert", "s3")] == [
        ("signed URL for the one object", "STS session creds scoped to the job's output key"),
        ("STS session creds scoped to one object (read_grant: sts_session)", "")]
    assert table[("onlineconvert", "azure_blob")][0][1] == relay
    for storage in ("s3", "azure_blob", "gcs"):
        assert table[("cloudconvert_v1", storage)] == [("signed URL for the one object", relay)]
    for provider in ("freeconvert", "onlineconvert", "cloudconvert_v1"):
        assert table[(provider, "sftp")] == [(routes.UPLOAD_UNSUPPORTED, relay)]
    assert table[("cloudconvert", "sftp")][1] == (
        "dedicated SFTP account (hand_over_account: true)",
        "dedicated SFTP account (hand_over_account: true)")
    # the GCS export key is long-lived and unscoped: listed as opt-in only, never the default
    assert table[("cloudconvert", "gcs")] == [
        ("signed URL for the one object", relay),
        ("", "dedicated GCS service-account key (not scoped) (hand_over_account: true)")]


def test_no_provider_is_handed_a_long_lived_key_unless_the_rule_opts_in() -> None:
    table = routes.capability_table()
    assert routes.long_lived_without_opt_in(table) == []
    # the same promise checked against the planner itself, for every rule setting
    for provider in map(PROVIDERS.load, PROVIDERS.names()):
        for storage in map(STORAGES.load, STORAGES.names()):
            for read_grant in READ_GRANT_KINDS:
                plan = plan_route(storage, provider, read_grant)
                assert plan.read_grant in routes.SCOPED_GRANT_KINDS
                assert plan.write_grant is None or plan.write_grant in routes.SCOPED_GRANT_KINDS
    assert not ACCOUNT_GRANT_KINDS & routes.SCOPED_GRANT_KINDS
    assert "gcs_service_account" in ACCOUNT_GRANT_KINDS
    gcs = next(r for r in table if (r.provider, r.storage) == ("cloudconvert", "gcs"))
    assert [(h.kind, h.when) for h in gcs.exports] == [
        (None, "default"), ("gcs_service_account", routes.OPT_IN)]


def test_every_grant_kind_a_provider_takes_is_classified() -> None:
    """A new grant kind must be described, and declared scoped or not, before it ships."""
    for provider in map(PROVIDERS.load, PROVIDERS.names()):
        for table in (provider.native_imports, provider.native_exports):
            for kinds in table.values():
                assert kinds <= set(routes.GRANT_KINDS), provider.name


@pytest.mark.parametrize("name", ["freeconvert", "onlineconvert", "cloudconvert_v1"])
def test_providers_listed_as_taking_no_upload_answer_with_a_failure_report(name: str) -> None:
    provider = PROVIDERS.load(name)
    with pytest.raises(ProviderRejected) as refused:
        refuse_unsent_input(provider, "upload")
    assert refused.value.code == "UPLOAD_UNSUPPORTED"
    assert refused.value.message == f"{name} takes no input uploaded by the bridge"
    assert not next(r for r in routes.capability_table() if r.provider == name).takes_uploads


def test_a_storage_whose_sdk_is_missing_is_still_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = STORAGES.load

    def load(name: str) -> type:
        if name == "gcs":
            raise ConfigError("storage 'gcs' needs google; install it with: "
                              "pip install 'convbridge[gcs]'")
        return real_load(name)

    monkeypatch.setattr(STORAGES, "load", load)
    text = routes.render(routes.capability_table())
    gcs = rows(text)[("freeconvert", "gcs")]
    assert gcs == [("(not installed: storage 'gcs' needs google; install it with: pip "
                    "install 'convbridge[gcs]')", "")]


def test_the_table_says_how_each_storage_announces_files(
        capsys: pytest.CaptureFixture[str]) -> None:
    main(["routes"])
    out = capsys.readouterr().out
    for name in STORAGES.names():
        assert f"\n  {name}: " in out
    assert "  s3: S3 event notification; EventBridge Object Created" in out
    assert "  sftp: scheduled sweep" in out


def test_routes_say_which_identity_signs_azure_grants() -> None:
    text = routes.render(routes.capability_table())
    line = next(line for line in text.splitlines() if line.startswith("  azure_blob: a user"))
    assert "user delegation key" in line and "Entra ID" in line
    assert "workload identity federation (no secret held)" in line
    assert '"signing": "client_certificate" (opt-in)' in line and "client certificate" in line
    assert '"signing": "account_key" (opt-in)' in line


def test_routes_say_which_identity_signs_gcs_grants() -> None:
    text = routes.render(routes.capability_table())
    signers = text.split("Who signs the grants:", 1)[1]
    line = next(line for line in signers.splitlines() if line.startswith("  gcs: "))
    assert "IAM Credentials signBlob" in line and "federated" in line
    assert '"signing": "json_key" (opt-in)' in line
