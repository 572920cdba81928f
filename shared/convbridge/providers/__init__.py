"""Provider adapters by name, imported on first use (the table is in convbridge.registries)."""

from convbridge.registries import PROVIDERS

__all__ = ["PROVIDERS"]
