"""A local, offline stand-in for the conversion providers: real HTTP, real conversions, real
storage I/O with exactly the grants given, signed callbacks with retries, and fault injection.
`Sandbox` runs one in a background thread (tests, demo, bench); `serve` runs one in the
foreground (`python -m devstack.sandbox`)."""

from __future__ import annotations

from .faults import Faults
from .models import CallbackTiming
from .server import Sandbox, serve

__all__ = ["CallbackTiming", "Faults", "Sandbox", "serve"]
