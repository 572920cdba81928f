"""Storage adapters by name, imported on first use (the table is in convbridge.registries);
each imports its cloud SDK only when it first talks to its cloud, so a trigger loads only its
own cloud SDK."""

from convbridge.registries import STORAGES

__all__ = ["STORAGES"]
