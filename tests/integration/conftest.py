"""Fixtures shared by the integration tests: local servers that several modules start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.servers import MotoServer, ServerStartError
from devstack.servers_azure import AzuriteServer


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    """One Azurite per test module; a server that cannot start fails the tests, never skips."""
    server = AzuriteServer()
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"Azurite could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server per test module, reset before and after it."""
    with MotoServer() as server:
        server.reset()
        yield server
        server.reset()
