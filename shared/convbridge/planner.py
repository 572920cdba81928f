"""Chooses, per storage x provider, whether the provider touches storage itself (native) or the
bridge carries the bytes (relay).

Native is chosen only when the provider's task accepts a grant as narrow as the storage can
mint; otherwise the provider imports from a signed URL and exports to its own download URL,
and the webhook streams outputs into storage. A long-lived key is never the fallback: grant
kinds in ACCOUNT_GRANT_KINDS are used only for rules that say ``hand_over_account: true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from convbridge.errors import ProviderRejected
from convbridge.grants import ACCOUNT_GRANT_KINDS
from convbridge.model import GrantKind, Route
from convbridge.providers.base import Provider
from convbridge.storage.base import Storage

__all__ = ["ACCOUNT_GRANT_KINDS", "Plan", "plan_route", "refuse_unsent_input"]


@dataclass(frozen=True)
class Plan:
    route: Route
    read_grant: GrantKind
    write_grant: GrantKind | None


def plan_route(storage: type[Storage], provider: type[Provider], read_grant: GrantKind, *,
               hand_over_account: bool = False) -> Plan:
    """``read_grant`` is the rule's choice; a provider that cannot take it falls back to a
    presigned URL, which every provider can import from (or, for a storage that cannot sign
    one, to an upload by the bridge). ``hand_over_account`` is the rule's opt-in to account
    grants, preferred then on both sides where the provider takes them."""
    imports = provider.native_imports.get(storage.name, frozenset())
    if hand_over_account:
        read_grant = min(imports & ACCOUNT_GRANT_KINDS, default=read_grant)
    if read_grant not in imports:
        read_grant = storage.relay_read_kind
    exports = provider.native_exports.get(storage.name, frozenset())
    write = next((k for k in storage.write_grant_kinds if k in exports
                  and (hand_over_account or k not in ACCOUNT_GRANT_KINDS)), None)
    if write is None:
        return Plan(route="relay", read_grant=read_grant, write_grant=None)
    return Plan(route="native", read_grant=read_grant, write_grant=write)


def refuse_unsent_input(provider: type[Provider], read_grant: GrantKind) -> None:
    """Before a job is built: an input only an upload by the bridge could deliver is refused
    (UPLOAD_UNSUPPORTED, a failure report) for a provider that takes no uploads."""
    if read_grant == "upload" and not provider.takes_uploads:
        raise ProviderRejected(f"{provider.name} takes no input uploaded by the bridge",
                               code="UPLOAD_UNSUPPORTED")
