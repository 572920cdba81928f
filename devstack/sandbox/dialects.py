"""The sandbox's provider dialects by provider name (as in rules): where each one is served on
the sandbox's port, how it shows a job, and the error code its jobs fail with for an unreadable
input. The four built-in dialects are listed by :class:`devstack.sandbox.server.Sandbox`; a
package adding a provider adds its dialect through the entry-point group
``convbridge.sandbox_dialects``, naming a :data:`DialectFactory`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from .backend import Backend
from .models import Dialect, Job

ENTRY_POINT_GROUP = "convbridge.sandbox_dialects"


@dataclass(frozen=True)
class ProviderDialect:
    """One provider's API on the sandbox."""

    #: the provider's name in rules (and in ``convbridge.registries.PROVIDERS``)
    provider: str
    #: served below this path on the sandbox's port: the provider's base URL there
    prefix: str
    #: the name its jobs carry in the shared backend
    backend_name: str
    #: how the dialect's API shows a job
    render_job: Callable[[Job], dict[str, Any]]
    #: the error code a job fails with for an input that is not a readable image
    corrupt_code: str
    #: what serves requests (the dialect's API and, for CloudConvert v2, its sync API)
    served: tuple[Dialect, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class DialectParts:
    """What a dialect is built from: the sandbox's shared backend and credentials."""

    backend: Backend
    api_key: str
    signing_secret: str
    #: the sandbox's URL, known once it listens
    base_url: Callable[[], str]


DialectFactory = Callable[[DialectParts], ProviderDialect]


def plugin_dialects(parts: DialectParts) -> list[ProviderDialect]:
    """The dialects installed packages add, built for one sandbox."""
    factories: list[DialectFactory] = [point.load()
                                       for point in entry_points(group=ENTRY_POINT_GROUP)]
    return [factory(parts) for factory in factories]
