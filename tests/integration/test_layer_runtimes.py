"""The layers build for every runtime template.yaml's PythonRuntime allows, and every handler
imports from them on that runtime's Python.

For each allowed runtime with an interpreter on this machine, shared/Makefile builds SharedLayer
and StorageSdkLayer with that interpreter and its own (host) wheels, and a fresh process of it
imports every functions/*/app.py by path, as Lambda loads a handler, from nothing but the
function's layer and boto3 (which the Lambda runtime ships), then loads every provider and
storage adapter (the binary wheels, the part that differs between runtimes). The layer's build
record must name that Python, and the layer must carry byte code the import then uses.

A runtime with no interpreter here is still built, for Lambda (arm64, that Python's wheels), and
its wheels are checked to be that version's; its test id says that nothing imported it. Which
case a runtime gets is decided at collection, so an interpreter installed later gets the full
check.

Needs PyPI (or pip's cache) for the layers' wheels and boto3: about a minute in all.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.template_check import load_template

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("SharedLayer", "StorageSdkLayer")
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
#: the Makefile's knobs, which the environment would otherwise override (pip reads PIP_* too)
MAKEFILE_KNOBS = {"PYTHON", "PIP", "PYTHON_RUNTIME", "PLATFORM_FLAGS", "RUNTIME_DEPS",
                  "STORAGE_DEPS", "COMPILE_BYTECODE", "RULES_FILE", "ARTIFACTS_DIR"}


def _template() -> dict[str, Any]:
    template, problems = load_template(ROOT / "template.yaml")
    assert template is not None, problems
    return template


def _allowed_runtimes() -> list[str]:
    return [str(runtime) for runtime in
            _template()["Parameters"]["PythonRuntime"]["AllowedValues"]]


def _runs_as(candidate: str, version: str) -> bool:
    # pyenv's shims are on PATH for every version installed, and fail for one not selected
    try:
        completed = subprocess.run(
            [candidate, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return completed.returncode == 0 and completed.stdout.strip() == version


@functools.cache
def _interpreter(runtime: str) -> str | None:
    """A working interpreter (with pip) of the runtime's Python on this machine, or None."""
    version = runtime.removeprefix("python")
    candidates = [shutil.which(runtime),
                  *sorted(glob.glob(str(PYENV_ROOT / "versions" / f"{version}*" / "bin" /
                                        runtime)))]
    return next((c for c in candidates if c and _runs_as(c, version)), None)


@dataclass(frozen=True)
class RuntimeCase:
    runtime: str
    interpreter: str | None

    @property
    def version(self) -> str:
        return self.runtime.removeprefix("python")

    @property
    def test_id(self) -> str:
        if self.interpreter is None:
            return f"built_for_{self.runtime}_without_an_interpreter_to_import_it"
        return f"built_and_every_handler_imported_by_{self.runtime}"


CASES = [RuntimeCase(runtime, _interpreter(runtime)) for runtime in _allowed_runtimes()]


def _function_layers() -> dict[str, set[str]]:
    """functions/<name> -> every layer the template may give it (both sides of an Fn::If)."""
    layers: dict[str, set[str]] = {}
    for resource in _template()["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = resource["Properties"]
        names = layers.setdefault(Path(properties["CodeUri"]).name, set())
        for layer in properties["Layers"]:
            choices = layer["Fn::If"][1:] if "Fn::If" in layer else [layer]
            names.update(choice["Ref"] for choice in choices)
    return layers


def _build_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in MAKEFILE_KNOBS and not k.startswith("PIP_")}


def _build_layer(layer: str, artifacts: Path, *settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT / "shared"), f"build-{layer}",
         f"ARTIFACTS_DIR={artifacts}", "RULES_FILE=none", *settings],
        env=_build_environment(), capture_output=True, text=True, timeout=240, check=False)


def _build_record(artifacts: Path) -> dict[str, str]:
    record: dict[str, str] = json.loads(
        (artifacts / "python" / "convbridge" / "_layer_build.json").read_text())
    return record


IMPORT_CHECK = """
import importlib.util, json, sys
from pathlib import Path
handlers = [Path(p) for p in sys.argv[1:]]
for app in handlers:
    # Lambda puts the function's directory first on sys.path and imports app.py from it
    sys.path.insert(0, str(app.parent))
    spec = importlib.util.spec_from_file_location(f"app_{app.parent.name}", app)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path.remove(str(app.parent))
    assert callable(module.handler), f"{app}: handler is not callable"
from convbridge.errors import ConfigError
from convbridge.providers import PROVIDERS
from convbridge.storage import STORAGES
for name in PROVIDERS.names():
    PROVIDERS.load(name)
loaded = []
for name in STORAGES.names():
    try:
        STORAGES.load(name)
        loaded.append(name)
    except ConfigError:
        pass
import sysconfig
stdlib = tuple({sysconfig.get_paths()[key] + "/" for key in ("stdlib", "platstdlib")})
files = {m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
print(json.dumps({"loaded": sorted(loaded), "files": sorted(
    f for f in files if not f.startswith(stdlib) or "/site-packages/" in f)}))
"""


def _lambda_runtime_packages(interpreter: str, target: Path) -> Path:
    """boto3 and its dependencies, which the Lambda runtime ships beside the standard library,
    installed for this interpreter."""
    subprocess.run([interpreter, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(target), "boto3"],
                   env=_build_environment(), check=True, capture_output=True, timeout=240)
    return target


def _byte_code(directory: Path) -> set[Path]:
    return set(directory.rglob("*.pyc"))


def _import_handlers(interpreter: str, layer: Path, runtime_packages: Path,
                     handlers: list[Path]) -> dict[str, Any]:
    # -S: no site-packages; PYTHONPATH is what Lambda gives a function: its layer (/opt/python)
    # and the runtime's own packages.
    completed = subprocess.run(
        [interpreter, "-S", "-c", IMPORT_CHECK, *map(str, handlers)],
        env={"PATH": os.environ.get("PATH", ""),
             "PYTHONPATH": os.pathsep.join([str(layer / "python"), str(runtime_packages)]),
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
             "POWERTOOLS_SERVICE_NAME": "convbridge"},
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _check_built_and_imported(case: RuntimeCase, interpreter: str, tmp_path: Path) -> None:
    runtime_packages = _lambda_runtime_packages(interpreter, tmp_path / "lambda-runtime")
    function_layers = _function_layers()
    handlers = sorted(ROOT.glob("functions/*/app.py"))
    assert {app.parent.name for app in handlers} == set(function_layers)
    for layer in LAYERS:
        artifacts = tmp_path / layer
        # PLATFORM_FLAGS= : this interpreter's own wheels, so they import here
        built = _build_layer(layer, artifacts, f"PYTHON={interpreter}",
                             f"PYTHON_RUNTIME={case.runtime}", "PLATFORM_FLAGS=")
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        assert _build_record(artifacts) == {"python": case.version, "platform": "host"}
        tag = f"cpython-{case.version.replace('.', '')}"
        sources = list((artifacts / "python").rglob("*.py"))
        missing = [s for s in sources if not (s.parent / "__pycache__" / f"{s.stem}.{tag}.pyc")
                   .is_file()]
        assert sources and not missing, f"no byte code for {missing[:5]}"
        compiled = _byte_code(artifacts)
        on_this_layer = [app for app in handlers if layer in function_layers[app.parent.name]]
        result = _import_handlers(interpreter, artifacts, runtime_packages, on_this_layer)
        outside = [f for f in result["files"]
                   if not f.startswith((f"{artifacts}/", f"{runtime_packages}/",
                                        f"{ROOT}/functions/"))]
        assert outside == [], "imported from outside the layer and the runtime's packages"
        # the shipped byte code was used as is: the import compiled nothing (/opt is read-only)
        assert _byte_code(artifacts) == compiled
        expected = ["s3"] if layer == "SharedLayer" else ["azure_blob", "gcs", "s3", "sftp"]
        assert result["loaded"] == expected, layer


def _wheel_tags(artifacts: Path) -> dict[str, list[str]]:
    return {wheel.parent.name: [line.removeprefix("Tag: ").strip()
                                for line in wheel.read_text().splitlines()
                                if line.startswith("Tag:")]
            for wheel in (artifacts / "python").glob("*.dist-info/WHEEL")}


def _tag_loads_on(tag: str, version: str) -> bool:
    interpreter, abi, _platform = tag.split("-")
    wanted = f"cp{version.replace('.', '')}"
    if abi == "none":
        return interpreter.startswith("py3")
    if abi == "abi3":
        return interpreter.startswith("cp3") and int(interpreter[3:]) <= int(wanted[3:])
    return interpreter == wanted and abi == wanted


def _check_built_without_interpreter(case: RuntimeCase, tmp_path: Path) -> None:
    assert _interpreter.__wrapped__(case.runtime) is None, (
        f"{case.runtime} is installed now: the collection missed it, rerun")
    for layer in LAYERS:
        artifacts = tmp_path / layer
        # the deployed build: Lambda's platform and this runtime's wheels (PLATFORM_FLAGS' default)
        built = _build_layer(layer, artifacts, f"PYTHON={sys.executable}",
                             f"PYTHON_RUNTIME={case.runtime}")
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        assert _build_record(artifacts) == {"python": case.version,
                                            "platform": "manylinux2014_aarch64"}
        tags = _wheel_tags(artifacts)
        binary = {name: t for name, t in tags.items() if any("-none-any" not in x for x in t)}
        assert binary, f"{layer}: no binary wheel at all, the check below would prove nothing"
        foreign = {name: t for name, t in binary.items()
                   if not all(_tag_loads_on(x, case.version) for x in t)}
        assert foreign == {}, f"{layer}: wheels not for Python {case.version}"
        # .pyc files are per version, and this machine has no Python of this one
        assert not list((artifacts / "python").rglob("*.pyc"))


@pytest.mark.parametrize("case", CASES, ids=[case.test_id for case in CASES])
def test_the_layers_for_each_allowed_runtime(case: RuntimeCase, tmp_path: Path) -> None:
    if case.interpreter is None:
        _check_built_without_interpreter(case, tmp_path)
    else:
        _check_built_and_imported(case, case.interpreter, tmp_path)
