"""Storage adapters by name, imported on first use so a trigger loads only its own cloud SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convbridge._registry import Registry

if TYPE_CHECKING:
    from convbridge.storage.base import Storage

STORAGES: Registry[Storage] = Registry(
    "storage",
    {
        "s3": ("convbridge.storage.s3:S3Storage", None),
        "azure_blob": ("convbridge.storage.azure_blob:AzureBlobStorage", "azure"),
        "gcs": ("convbridge.storage.gcs:GcsStorage", "gcs"),
        "sftp": ("convbridge.storage.sftp:SftpStorage", "sftp"),
    },
)
