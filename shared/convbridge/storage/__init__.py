"""Storage adapters by name, imported on first use (the table of convbridge.registries, typed by
the adapters' base class); each imports its cloud SDK only when it first talks to its cloud,
so a trigger loads only its own cloud SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from convbridge import registries
from convbridge._registry import Registry

if TYPE_CHECKING:
    from convbridge.storage.base import Storage

STORAGES = cast("Registry[Storage]", registries.STORAGES)

__all__ = ["STORAGES"]
