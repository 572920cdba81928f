"""Storage harnesses: what the dev stack needs to know about one storage to run the whole flow
against its local server. ``HARNESSES`` maps storage names (as in rules and in
``convbridge.registries.STORAGES``) to classes, imported on first use so the S3 demo never
needs Azurite or fake-gcs-server installed. A package adding a storage adds its harness through
the entry-point group ``convbridge.harnesses``."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from devstack.harness.base import StorageHarness

ENTRY_POINT_GROUP = "convbridge.harnesses"
HARNESSES = {
    "s3": "devstack.harness.s3:S3Harness",
    "azure_blob": "devstack.harness.azure:AzureHarness",
    "gcs": "devstack.harness.gcs:GcsHarness",
    "sftp": "devstack.harness.sftp:SftpHarness",
}
HARNESSES.update({point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)
                  if point.name not in HARNESSES})


def load_harness(name: str) -> type[StorageHarness]:
    try:
        target = HARNESSES[name]
    except KeyError:
        known = ", ".join(sorted(HARNESSES))
        raise ValueError(f"unknown storage {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[StorageHarness] = getattr(importlib.import_module(module_name), class_name)
    return cls
