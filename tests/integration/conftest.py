"""Fixtures shared by the integration tests: local servers that several modules start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest

from devstack.servers import MotoServer, ServerStartError
from devstack.servers_azure import AzuriteOAuthServer, AzuriteServer


class _Server(Protocol):
    label: str

    def start(self) -> object: ...

    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


def running(server: ServerT) -> Iterator[ServerT]:
    """``server`` started for a fixture's span; a server that cannot start fails the tests,
    never skips them."""
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"{server.label} could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    """One Azurite per test module."""
    yield from running(AzuriteServer())


@pytest.fixture(scope="module")
def azurite_oauth() -> Iterator[AzuriteOAuthServer]:
    """One Azurite over HTTPS with ``--oauth basic`` per test module: it serves user delegation
    keys to bearer tokens."""
    yield from running(AzuriteOAuthServer())


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server per test module, reset before and after it."""
    with MotoServer() as server:
        server.reset()
        yield server
        server.reset()
