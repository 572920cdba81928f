"""The Python a Lambda layer was built for, and the refusal to run on another one.

``sam build`` tells a makefile build nothing about the function's runtime, so the layer's
binary wheels follow shared/Makefile's PYTHON_RUNTIME while the functions run on template.yaml's
PythonRuntime: two knobs that may disagree. The layer build writes what it built for into
``python/convbridge/_layer_build.json``; importing :mod:`convbridge` compares it with the
running interpreter before any other module (or wheel) is imported, so a mismatch fails the
cold start with a message that names both versions and the rebuild command, never an
ImportError from deep inside a wheel built for another ABI. Lambda answers every invocation
of such a function with that message. No file (running from the repository or a wheel) means
no check. Standard library only: this runs before anything else.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from convbridge.errors import ConfigError

#: written by shared/Makefile next to the package it copies into the layer
BUILD_FILE = Path(__file__).with_name("_layer_build.json")


class LayerBuildMismatch(ConfigError):
    """The layer was built for another Python than the one running it."""


@dataclass(frozen=True)
class LayerBuild:
    """What shared/Makefile built a layer for: ``python`` as "3.12", ``platform`` as pip's
    platform tag ("manylinux2014_aarch64"), or "host" for the build machine's own wheels."""

    python: str
    platform: str


def read_build(build_file: Path = BUILD_FILE) -> LayerBuild | None:
    """The layer's build record, or None when there is none (not running from a layer)."""
    try:
        text = build_file.read_text()
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        return LayerBuild(python=str(fields["python"]), platform=str(fields["platform"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise LayerBuildMismatch(
            f"{build_file} is unreadable ({exc!r}): rebuild the layers with "
            f"PYTHON_RUNTIME={_runtime()} sam build") from exc


def refuse_mismatched_layer(build_file: Path = BUILD_FILE) -> None:
    """LayerBuildMismatch when the layer's wheels were built for another Python than this."""
    build = read_build(build_file)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if build is None or build.python == running:
        return
    raise LayerBuildMismatch(
        f"the layer was built for Python {build.python} ({build.platform}) but the function runs "
        f"on Python {running}: its binary wheels would not load. Rebuild the layers for this "
        f"runtime with PYTHON_RUNTIME={_runtime()} sam build (PythonRuntime and PYTHON_RUNTIME "
        f"must name the same runtime)")


def _runtime() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"
