"""``toyconvert``: the CloudConvert v2 dialect under another name and base URL."""

from __future__ import annotations

from typing import ClassVar

from convbridge.providers.cloudconvert import CloudConvert


class ToyConvert(CloudConvert):
    name: ClassVar[str] = "toyconvert"
    default_base_url: ClassVar[str | None] = "https://api.toyconvert.example/v2"
    download_hosts: ClassVar[tuple[str, ...]] = ("*.toyconvert.example",)
