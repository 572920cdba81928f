"""Name -> "module:Class" maps whose classes are imported only when first asked for.

The S3 trigger must not pay for importing the Azure or Google SDKs at cold start, and a user who
installed only the S3 parts must get an install hint, not a bare ImportError.

Names come from three places, in this order of precedence, the way fsspec's registry works:
the built-in table, :meth:`Registry.register` calls, and the Python entry points of the
registry's group (``convbridge.providers``, ``convbridge.storages``), which let a separately
installed package add an adapter. Entry points are read once, on the first question about
names; nothing they name is imported before it is used.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from convbridge.errors import ConfigError

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Mapping[str, tuple[str, str | None]], *,
                 group: str | None = None) -> None:
        self._kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, type[T]] = {}
        #: the entry-point group still to be read, None once read (or for no group)
        self._group = group
        self._lock = threading.Lock()

    def register(self, name: str, target: str, extra: str | None = None, *,
                 replace: bool = False) -> None:
        """Add ``name`` -> ``"module:Class"``; ``extra`` is the ``convbridge[extra]`` that
        installs what the module imports. An existing name stays unless ``replace``."""
        module_name, colon, class_name = target.partition(":")
        if not module_name or not colon or not class_name:
            raise ConfigError(f"{self._kind} {name!r}: {target!r} is not 'module:Class'")
        self._read_entry_points()
        with self._lock:
            if name in self._entries and not replace:
                raise ConfigError(f"{self._kind} {name!r} is already registered "
                                  f"({self._entries[name][0]})")
            self._entries[name] = (target, extra)
            self._loaded.pop(name, None)

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(self._entries)

    def target(self, name: str) -> str:
        """The ``"module:Class"`` that ``name`` loads (its module tells who ships it)."""
        self._read_entry_points()
        return self._entries[name][0]

    def __contains__(self, name: object) -> bool:
        self._read_entry_points()
        return name in self._entries

    def load(self, name: str) -> type[T]:
        if name in self._loaded:
            return self._loaded[name]
        self._read_entry_points()
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
        cls: type[T] | None = getattr(module, class_name, None)
        if cls is None:
            raise ConfigError(f"{self._kind} {name!r}: {module_name} has no {class_name}")
        declared = getattr(cls, "name", None)
        if declared != name:
            # the name is what rules, records and callback URLs carry: one spelling only
            raise ConfigError(f"{self._kind} {name!r}: {target} calls itself {declared!r}")
        self._loaded[name] = cls
        return cls

    def _read_entry_points(self) -> None:
        if self._group is None:
            return
        with self._lock:
            if self._group is None:
                return
            group, self._group = self._group, None
            for point in entry_points(group=group):
                if point.name in self._entries:
                    logger.warning("%s %r from entry point %s ignored: the name is taken by %s",
                                   self._kind, point.name, point.value,
                                   self._entries[point.name][0])
                    continue
                self._entries[point.name] = (point.value, None)
