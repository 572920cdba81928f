"""The one list of provider and storage names: name -> "module:Class", imported on first use.

Rules validation, settings (each provider's ``CONVBRIDGE_<NAME>_URL``), the planner,
``convbridge routes``, the contract suite and the dev stack all read their names from here.
Only names live at this level; an adapter's module loads when that adapter is first asked
for, and a storage adapter's cloud SDK only when it first talks to its cloud
(convbridge.storage._vendor), so a trigger loads only its own cloud SDK. Packages add adapters
through the entry-point groups ``convbridge.providers`` and ``convbridge.storages``.

The tables are untyped here, so this bottom layer names no adapter module, not even for
annotations; ``convbridge.providers.PROVIDERS`` and ``convbridge.storage.STORAGES`` are the same
objects typed by their base classes, for code that uses the classes.
"""

from __future__ import annotations

from typing import Any

from convbridge._registry import Registry

PROVIDERS: Registry[Any] = Registry(
    "provider",
    {
        "cloudconvert": ("convbridge.providers.cloudconvert:CloudConvert", None),
        "freeconvert": ("convbridge.providers.freeconvert:FreeConvert", None),
        "onlineconvert": ("convbridge.providers.onlineconvert:OnlineConvert", None),
        "cloudconvert_v1": ("convbridge.providers.cloudconvert_v1:CloudConvertV1", None),
    },
    group="convbridge.providers",
)
STORAGES: Registry[Any] = Registry(
    "storage",
    {
        "s3": ("convbridge.storage.s3:S3Storage", None),
        "azure_blob": ("convbridge.storage.azure_blob:AzureBlobStorage", "azure"),
        "gcs": ("convbridge.storage.gcs:GcsStorage", "gcs"),
        "sftp": ("convbridge.storage.sftp:SftpStorage", "sftp"),
    },
    group="convbridge.storages",
)
