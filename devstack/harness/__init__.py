"""Storage harnesses: what the dev stack needs to know about one storage to run the whole flow
against its local server. ``HARNESSES`` maps the demo's ``--storage`` names to classes, imported
on first use so the S3 demo never needs Azurite or fake-gcs-server installed."""

from __future__ import annotations

import importlib

from devstack.harness.base import StorageHarness

HARNESSES = {
    "s3": "devstack.harness.s3:S3Harness",
    "azure": "devstack.harness.azure:AzureHarness",
    "gcs": "devstack.harness.gcs:GcsHarness",
    "sftp": "devstack.harness.sftp:SftpHarness",
}


def load_harness(name: str) -> type[StorageHarness]:
    try:
        target = HARNESSES[name]
    except KeyError:
        known = ", ".join(sorted(HARNESSES))
        raise ValueError(f"unknown storage {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[StorageHarness] = getattr(importlib.import_module(module_name), class_name)
    return cls
