"""Cloud SDK modules imported on first use, so loading an adapter class to read what it
declares (``swept``, its grant kinds) costs no SDK import: rules naming a storage are parsed
at cold start by functions that never talk to it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any


class VendorModule:
    """Stands for the module ``name``, imported at the first attribute read. Whether the SDK
    is installed is checked when the adapter's module loads (its top-level package is looked
    up, not imported), so a missing SDK still fails loading the adapter, with its name."""

    def __init__(self, name: str) -> None:
        top = name.partition(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"VendorModule({self._name!r})"
