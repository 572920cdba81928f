"""The capability table behind ``convbridge routes``: for every provider and storage, what the
provider is handed to read a source and to write its outputs, exactly as the planner would
choose it for each rule setting. It is built from class attributes only (the adapters'
``native_imports`` / ``native_exports`` and each storage's ``write_grant_kinds``), so it needs
no credentials and no network, and a storage whose SDK is not installed is still listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from convbridge.errors import ConfigError
from convbridge.grants import (
    ACCOUNT_GRANT_KINDS,
    GRANT_KINDS,
    READ_GRANT_KINDS,
    SCOPED_GRANT_KINDS,
    grant_kind_info,
)
from convbridge.planner import plan_route
from convbridge.providers import PROVIDERS
from convbridge.providers.base import Provider
from convbridge.storage import STORAGES
from convbridge.storage.base import Storage

#: GRANT_KINDS and SCOPED_GRANT_KINDS are the grants table's, re-exported for the table's readers
__all__ = ["GRANT_KINDS", "SCOPED_GRANT_KINDS", "Handed", "Route", "capability_table", "describe",
           "long_lived_without_opt_in", "render"]
UPLOAD_UNSUPPORTED = "nothing, and it takes no upload: failure report (UPLOAD_UNSUPPORTED)"
RELAY = "relay: the bridge writes"
OPT_IN = "hand_over_account: true"


@dataclass(frozen=True)
class Handed:
    """One grant kind a provider may be handed (None: nothing, the bridge relays), and the
    rule setting that leads to it."""

    kind: str | None
    when: str


@dataclass(frozen=True)
class Route:
    provider: str
    storage: str
    imports: tuple[Handed, ...] = ()
    exports: tuple[Handed, ...] = ()
    #: why the storage could not be inspected (its SDK is missing), else None
    unavailable: str | None = None
    #: whether the provider takes an input the bridge uploads (for ``upload`` grants)
    takes_uploads: bool = True


def capability_table() -> list[Route]:
    """Every registered provider x storage, providers and storages in name order."""
    table = []
    for provider_name in PROVIDERS.names():
        provider = PROVIDERS.load(provider_name)
        for storage_name in STORAGES.names():
            try:
                storage = STORAGES.load(storage_name)
            except ConfigError as exc:
                table.append(Route(provider_name, storage_name, unavailable=str(exc)))
                continue
            table.append(_route(provider, storage))
    return table


def _route(provider: type[Provider], storage: type[Storage]) -> Route:
    default = plan_route(storage, provider, "presigned_url").read_grant
    imports: dict[str, list[str]] = {default: ["default"]}
    for read_grant in sorted(READ_GRANT_KINDS):
        kind = plan_route(storage, provider, read_grant).read_grant
        if kind != default:
            imports.setdefault(kind, []).append(f"read_grant: {read_grant}")
    exports: list[Handed] = []
    write = plan_route(storage, provider, "presigned_url").write_grant
    exports.append(Handed(write, "default"))
    opted = plan_route(storage, provider, "presigned_url", hand_over_account=True)
    if opted.read_grant not in imports:
        imports[opted.read_grant] = [OPT_IN]
    if opted.write_grant != write:
        exports.append(Handed(opted.write_grant, OPT_IN))
    return Route(
        provider=provider.name,
        storage=storage.name,
        imports=tuple(Handed(kind, ", ".join(when)) for kind, when in imports.items()),
        exports=tuple(exports),
        takes_uploads=provider.takes_uploads,
    )


def long_lived_without_opt_in(table: list[Route]) -> list[str]:
    """Routes that would hand a provider anything but a scoped grant without the rule's
    opt-in; the promise is that this list is empty."""
    found = []
    for route in table:
        for direction, handed in (("import", route.imports), ("export", route.exports)):
            for item in handed:
                if item.kind and item.kind not in SCOPED_GRANT_KINDS and item.when != OPT_IN:
                    found.append(f"{route.provider} x {route.storage} {direction}: {item.kind}")
    return found


def describe(handed: Handed, *, export: bool, takes_uploads: bool = True) -> str:
    if handed.kind is None:
        text = RELAY
    elif handed.kind == "upload" and not takes_uploads:
        text = UPLOAD_UNSUPPORTED
    else:
        info = grant_kind_info(handed.kind)
        text = handed.kind if info is None else info.writes if export else info.reads
    return text if handed.when == "default" else f"{text} ({handed.when})"


def render(table: list[Route]) -> str:
    """The table as aligned text, one line per provider x storage and grant."""
    rows = [("provider", "storage", "import: the provider is handed", "export")]
    for route in table:
        if route.unavailable:
            rows.append((route.provider, route.storage, f"(not installed: {route.unavailable})",
                         ""))
            continue
        imports = [describe(h, export=False, takes_uploads=route.takes_uploads)
                   for h in route.imports]
        exports = [describe(h, export=True) for h in route.exports]
        for line in range(max(len(imports), len(exports))):
            rows.append((
                route.provider if line == 0 else "",
                route.storage if line == 0 else "",
                imports[line] if line < len(imports) else "",
                exports[line] if line < len(exports) else "",
            ))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, [*widths, 0], strict=True))
             for row in rows]
    notes = [
        "",
        f"Long-lived accounts ({', '.join(sorted(ACCOUNT_GRANT_KINDS))}) are handed over only "
        f"for rules with {OPT_IN}.",
        "",
        "How each storage announces a new file:",
        *announcements(),
        *signers(),
    ]
    return "\n".join(line.rstrip() for line in lines + notes)


def signers() -> list[str]:
    """Who signs each storage's grants, for storages that say (``Storage.grant_signing``)."""
    found = []
    for name in STORAGES.names():
        try:
            signing = STORAGES.load(name).grant_signing
        except ConfigError:
            continue
        if signing:
            found.append(f"  {name}: {signing}")
    return ["", "Who signs the grants:", *found] if found else []


def announcements() -> list[str]:
    """One line per registered storage: the trigger payloads (``Storage.event_formats``) that
    announce its new files, or its scheduled sweep."""
    found = []
    for name in STORAGES.names():
        try:
            storage = STORAGES.load(name)
        except ConfigError:
            found.append(f"  {name}: (not installed)")
            continue
        found.append(f"  {name}: {'; '.join(storage.event_formats) or 'no trigger'}")
    return found
