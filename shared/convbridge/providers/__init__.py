"""Provider adapters by name, imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convbridge._registry import Registry

if TYPE_CHECKING:
    from convbridge.providers.base import Provider

PROVIDERS: Registry[Provider] = Registry(
    "provider",
    {
        "cloudconvert": ("convbridge.providers.cloudconvert:CloudConvert", None),
        "freeconvert": ("convbridge.providers.freeconvert:FreeConvert", None),
        "onlineconvert": ("convbridge.providers.onlineconvert:OnlineConvert", None),
        "cloudconvert_v1": ("convbridge.providers.cloudconvert_v1:CloudConvertV1", None),
    },
)
