"""Shared fixtures: the local stack (moto + sandbox + webhook) and sample files."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from devstack.stack import DevStack


def png_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    from PIL import Image

    image = Image.new(mode, size, (200, 40, 90) if mode == "RGB" else (200, 40, 90, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def stack() -> Iterator[DevStack]:
    with DevStack() as running:
        yield running


@pytest.fixture
def sts_stack() -> Iterator[DevStack]:
    with DevStack(read_grant="sts_session") as running:
        yield running
