"""Chooses, per storage x provider, whether the provider touches storage itself (native) or the
bridge carries the bytes (relay).

Native is chosen only when the provider's task accepts a grant as narrow as the storage can
mint; otherwise the provider imports from a signed URL and exports to its own download URL,
and the webhook streams outputs into storage. A long-lived key is never the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from convbridge.model import Route
from convbridge.providers.base import Provider
from convbridge.storage.base import Storage


@dataclass(frozen=True)
class Plan:
    route: Route
    read_grant: str
    write_grant: str | None


def plan_route(storage: type[Storage], provider: type[Provider], read_grant: str) -> Plan:
    """``read_grant`` is the rule's choice; a provider that cannot take it falls back to a
    presigned URL, which every provider can import from."""
    imports = provider.native_imports.get(storage.name, frozenset())
    if read_grant not in imports:
        read_grant = "presigned_url"
    exports = provider.native_exports.get(storage.name, frozenset())
    write = next((k for k in storage.write_grant_kinds if k in exports), None)
    if write is None:
        return Plan(route="relay", read_grant=read_grant, write_grant=None)
    return Plan(route="native", read_grant=read_grant, write_grant=write)
