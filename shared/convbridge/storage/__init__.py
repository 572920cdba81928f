"""Storage adapters by name, imported on first use so a trigger loads only its own cloud SDK
(the table is in convbridge.registries)."""

from convbridge.registries import STORAGES

__all__ = ["STORAGES"]
