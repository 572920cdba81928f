"""Name -> "module:Class" maps whose classes are imported only when first asked for.

The S3 trigger must not pay for importing the Azure or Google SDKs at cold start, and a user who
installed only the S3 parts must get an install hint, not a bare ImportError.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar

from convbridge.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Mapping[str, tuple[str, str | None]]) -> None:
        self._kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, type[T]] = {}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def load(self, name: str) -> type[T]:
        if name in self._loaded:
            return self._loaded[name]
        try:
            target, extra = self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self._kind} {name!r}; known: {known}") from None
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f"; install it with: pip install 'convbridge[{extra}]'" if extra else ""
            raise ConfigError(f"{self._kind} {name!r} needs {exc.name}{hint}") from exc
        cls: type[T] = getattr(module, class_name)
        self._loaded[name] = cls
        return cls
