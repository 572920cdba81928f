"""Precompiled byte code in the layer: the S3 trigger's cold import from a SharedLayer built by
shared/Makefile (host wheels, for this Python), once sources only (COMPILE_BYTECODE=no) and
once with the byte code the build compiles (``compileall --invalidation-mode unchecked-hash``,
done when the build Python is the layer's), each in fresh interpreters that
may not write byte code (Lambda's /opt is read-only: without shipped .pyc every cold start
compiles every module it imports). Runs alternate so both see the same machine load.

    python -m bench.layer_bytecode [--runs N]

The layers are built once into build/bench-layer (pip needs PyPI or its cache) and reused."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, Row, say

LAYER = ROOT / "build" / "bench-layer"
RUNS = 15
#: the figure that would justify shipping byte code: a cut of more than 10%
TARGET_RATIO = 0.9

IMPORT = """
import importlib.util, json, sys, time
started = time.perf_counter()
spec = importlib.util.spec_from_file_location('app', {app!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
elapsed = time.perf_counter() - started
origins = {{name: getattr(sys.modules.get(name), '__file__', None)
           for name in ('convbridge', 'httpx', 'yaml', 'aws_lambda_powertools')}}
print(json.dumps({{"seconds": elapsed, "origins": origins}}))
"""


def _built(directory: Path, *settings: str) -> Path:
    if not (directory / "python" / "convbridge" / "__init__.py").is_file():
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run(["make", "-s", "-f", str(ROOT / "shared" / "Makefile"),
                        "build-SharedLayer", f"ARTIFACTS_DIR={directory}", "PLATFORM_FLAGS=",
                        "RULES_FILE=none", f"PYTHON={sys.executable}", *settings],
                       cwd=ROOT, check=True, timeout=600)
    return directory


def build_layers() -> tuple[Path, Path]:
    """The layer built sources only (COMPILE_BYTECODE=no), and as shared/Makefile builds it
    when the build Python is the layer's (here: host wheels for this Python), with byte code."""
    return (_built(LAYER / "plain", "COMPILE_BYTECODE=no"), _built(LAYER / "compiled"))


def _import_seconds(layer: Path) -> float:
    app = ROOT / "functions" / "s3_trigger" / "app.py"
    done = subprocess.run(
        [sys.executable, "-c", IMPORT.format(app=str(app))], cwd=LAYER, capture_output=True,
        text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(layer / "python"), "PYTHONDONTWRITEBYTECODE": "1",
             "POWERTOOLS_SERVICE_NAME": "convbridge", "AWS_DEFAULT_REGION": "us-east-1"})
    if done.returncode != 0:
        raise RuntimeError(f"import from {layer} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, origin in result["origins"].items():
        if origin is None or not str(origin).startswith(str(layer)):
            raise RuntimeError(f"{name} came from {origin}, not from the layer {layer}")
    return float(result["seconds"])


def measure(runs: int = RUNS) -> list[Row]:
    plain, compiled = build_layers()
    for layer in (plain, compiled):  # warm the file cache for both
        _import_seconds(layer)
    without, with_pyc = [], []
    for _ in range(runs):
        without.append(_import_seconds(plain))
        with_pyc.append(_import_seconds(compiled))
    seconds, baseline = statistics.median(with_pyc), statistics.median(without)
    ratio = seconds / baseline
    say(f"  import functions/s3_trigger/app.py from the layer: {seconds * 1000:.0f} ms with .pyc, "
        f"{baseline * 1000:.0f} ms without ({ratio:.2f}x)")
    return [Row(
        area="cold start", figure="import functions/s3_trigger/app.py from a built SharedLayer, "
        "byte code shipped", value=seconds * 1000, unit="ms", baseline=baseline * 1000,
        baseline_label="the same layer as built, sources only", target=f"<= {TARGET_RATIO}x "
        "to ship byte code", met=ratio <= TARGET_RATIO,
        note=f"median of {runs} fresh interpreters each, alternating, no byte code written; "
             "python -m bench.layer_bytecode")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=RUNS)
    for row in measure(parser.parse_args().runs):
        print(row)
