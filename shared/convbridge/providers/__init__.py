"""Provider adapters by name, imported on first use: the table of convbridge.registries, typed
by the adapters' base class."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from convbridge import registries
from convbridge._registry import Registry

if TYPE_CHECKING:
    from convbridge.providers.base import Provider

PROVIDERS = cast("Registry[Provider]", registries.PROVIDERS)

__all__ = ["PROVIDERS"]
