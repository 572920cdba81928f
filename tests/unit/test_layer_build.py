"""A layer built for another Python is refused at import with both versions and the rebuild
command (shared/Makefile writes python/convbridge/_layer_build.json); no record, no check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convbridge.errors import ConfigError
from convbridge.layer_build import (
    LayerBuild,
    LayerBuildMismatch,
    read_build,
    refuse_mismatched_layer,
)

ROOT = Path(__file__).resolve().parents[2]
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
OTHER = "3.12" if RUNNING != "3.12" else "3.13"


def _record(tmp_path: Path, python: str, platform: str = "manylinux2014_aarch64") -> Path:
    path = tmp_path / "_layer_build.json"
    path.write_text(json.dumps({"python": python, "platform": platform}))
    return path


def test_a_layer_built_for_another_python_is_refused_naming_both_and_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(LayerBuildMismatch) as refused:
        refuse_mismatched_layer(_record(tmp_path, OTHER))
    message = str(refused.value)
    assert f"built for Python {OTHER}" in message
    assert f"runs on Python {RUNNING}" in message
    assert f"PYTHON_RUNTIME=python{RUNNING} sam build" in message
    assert isinstance(refused.value, ConfigError)


def test_a_layer_built_for_this_python_is_accepted(tmp_path: Path) -> None:
    refuse_mismatched_layer(_record(tmp_path, RUNNING))
    assert read_build(_record(tmp_path, RUNNING, "host")) == LayerBuild(RUNNING, "host")


def test_no_build_record_means_no_check(tmp_path: Path) -> None:
    refuse_mismatched_layer(tmp_path / "_layer_build.json")
    assert read_build(tmp_path / "_layer_build.json") is None


@pytest.mark.parametrize("text", ["", "{", '{"platform": "host"}', "[]"])
def test_an_unreadable_build_record_is_refused_with_the_rebuild_command(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "_layer_build.json"
    path.write_text(text)
    with pytest.raises(LayerBuildMismatch, match=f"PYTHON_RUNTIME=python{RUNNING} sam build"):
        refuse_mismatched_layer(path)


@pytest.mark.parametrize(("built_for", "refused"), [(OTHER, True), (RUNNING, False)])
def test_a_handler_on_a_mismatched_layer_fails_on_the_version_not_a_wheel(
    tmp_path: Path, built_for: str, refused: bool
) -> None:
    # A layer whose httpx stands for a wheel built for another ABI: it fails on import.
    layer = tmp_path / "python"
    shutil.copytree(ROOT / "shared" / "convbridge", layer / "convbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _record(layer / "convbridge", built_for)
    (layer / "httpx").mkdir()
    (layer / "httpx" / "__init__.py").write_text(
        "raise ImportError('undefined symbol: _PyUnicode_Ready (a wheel for another ABI)')\n")
    app = ROOT / "functions" / "s3_trigger" / "app.py"
    done = subprocess.run(
        [sys.executable, "-c",
         "import importlib.util\n"
         f"spec = importlib.util.spec_from_file_location('app', {str(app)!r})\n"
         "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(layer)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    if refused:
        assert last.startswith("convbridge.layer_build.LayerBuildMismatch: ")
        assert f"built for Python {OTHER}" in last and f"runs on Python {RUNNING}" in last
        assert "undefined symbol" not in done.stderr
    else:  # the check lets a matching layer through to its (here broken) dependencies
        assert "undefined symbol" in last
