"""`sam build` builds the real template without Docker (PythonRuntime set to this machine's
Python, the layers' wheels for this machine), and each built function imports its handler from
the build output alone, in an interpreter that sees nothing but the function, its one layer and
what the Lambda runtime itself ships (boto3 and its dependencies). That proves the layers carry
every dependency the handlers and the adapters they load need, and that the S3 trigger's lean
layer carries no other cloud's SDK. The layers' default build (arm64, the template's runtime) is
checked for the right platform too, and `sam validate` accepts the template and rejects broken
ones the way `make lint` runs it.

Needs the deploy tools (`make deploy-tools`, which `make lint` runs) and PyPI for the layers'
wheels (pip's cache makes a second run fast: about 10 s in all).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_BIN = ROOT / ".venv-deploy" / "bin"
SAM = DEPLOY_BIN / "sam"
LOCAL_RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
EXAMPLE_RULES = ROOT / "rules.example.yaml"

@pytest.fixture(autouse=True)
def _deploy_tools_installed() -> None:
    # make test installs them (through make lint); a missing tool fails, never skips
    if not SAM.exists():
        pytest.fail("deploy tools not installed: run `make deploy-tools` (make lint does)")

#: What the Lambda Python runtime ships besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

FUNCTION_DIRECTORIES = {
    "S3TriggerFunction": "s3_trigger",
    "WebhookFunction": "webhook",
    "AzureTriggerFunction": "azure_trigger",
    "GcsTriggerFunction": "gcs_trigger",
    "SftpSweepFunction": "sftp_sweep",
    "ReconcilerFunction": "reconciler",
}


def _sam_environment() -> dict[str, str]:
    environment = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", SAM_CLI_TELEMETRY="0",
                       PATH=f"{DEPLOY_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    # pip reads PIP_* variables as options (PIP_PYTHON_VERSION is --python-version): none here.
    return {k: v for k, v in environment.items() if not k.startswith("PIP_")}


def _missing_functions() -> set[str]:
    return {name for name, directory in FUNCTION_DIRECTORIES.items()
            if not (ROOT / "functions" / directory / "app.py").is_file()}


def _buildable_template(tmp_path: Path) -> Path:
    """template.yaml as it is; or, while a handler directory does not exist yet, a copy without
    those functions (with absolute code paths), so the others are still built and checked."""
    missing = _missing_functions()
    if not missing:
        return ROOT / "template.yaml"
    text = (ROOT / "template.yaml").read_text()
    text = text.replace("CodeUri: functions/", f"CodeUri: {ROOT}/functions/")
    text = text.replace("ContentUri: shared/", f"ContentUri: {ROOT}/shared/")
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    # Removing resources from YAML with CloudFormation tags is more than this test needs:
    # `sam build` takes the resources to build by name instead.
    return copy


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sam")
    template = _buildable_template(work)
    build_dir = work / "build"
    environment = _sam_environment()
    # Host wheels (this machine runs the import check) for the host's Python.
    environment["PLATFORM_FLAGS"] = ""
    environment["RULES_FILE"] = str(EXAMPLE_RULES)
    targets = [None] if not _missing_functions() else [
        name for name in FUNCTION_DIRECTORIES if name not in _missing_functions()]
    for target in targets:
        command = [str(SAM), "build", "--template", str(template), "--build-dir",
                   str(build_dir), "--parameter-overrides", f"PythonRuntime={LOCAL_RUNTIME}"]
        if target:
            command.insert(2, target)
        completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True,
                                   text=True, timeout=300, check=False)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return build_dir


@pytest.fixture(scope="module")
def lambda_runtime_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding (links to) just the packages the Lambda runtime provides."""
    runtime = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (runtime / source.name).symlink_to(source)
    return runtime


def _built_template(build_dir: Path) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", any_tag)
    loaded: dict[str, Any] = yaml.load((build_dir / "template.yaml").read_text(), Loader=Loader)
    return loaded


def _layer_of(template: dict[str, Any], function: str) -> str:
    (layer,) = template["Resources"][function]["Properties"]["Layers"]
    # The webhook: StorageSdkLayer when another storage is deployed (sam build writes the
    # long form, Fn::If).
    for key in ("Fn::If", "If"):
        if key in layer:
            layer = layer[key][1]
    return str(layer["Ref"])


IMPORT_CHECK = """
import json, sys
function_dir, layer_dir, runtime_dir, layer = sys.argv[1:5]
sys.path[:0] = [function_dir, layer_dir, runtime_dir]
import app
assert callable(app.handler), "app.handler is not callable"
from convbridge.errors import ConfigError
from convbridge.providers import PROVIDERS
from convbridge.storage import STORAGES
for name in PROVIDERS.names():
    PROVIDERS.load(name)
loaded, refused = [], []
for name in STORAGES.names():
    try:
        STORAGES.load(name)
        loaded.append(name)
    except ConfigError:
        refused.append(name)
outside = sorted({m.__file__.split("/site-packages/")[0] for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and "/site-packages/" in m.__file__})
print(json.dumps({"loaded": loaded, "refused": refused, "outside": outside}))
"""


@pytest.mark.parametrize("function", sorted(FUNCTION_DIRECTORIES))
def test_built_function_imports_its_handler_from_the_build_output(
    built: Path, lambda_runtime_packages: Path, function: str
) -> None:
    assert function not in _missing_functions(), f"functions/{FUNCTION_DIRECTORIES[function]}"
    template = _built_template(built)
    properties = template["Resources"][function]["Properties"]
    assert properties["CodeUri"] == function
    assert template["Globals"]["Function"]["Runtime"] == {"Ref": "PythonRuntime"}
    layer = _layer_of(template, function)
    function_dir, layer_dir = built / function, built / layer / "python"
    assert (function_dir / "app.py").is_file()
    # -I -S: no site-packages, no PYTHONPATH; only the build output and the runtime's packages.
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_CHECK, str(function_dir), str(layer_dir),
         str(lambda_runtime_packages), layer],
        env={"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "convbridge"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["outside"] == [], "imported from outside the build output"
    if layer == "SharedLayer":
        # The S3 trigger's lean layer: S3 only; the other adapters say what to install.
        assert result["loaded"] == ["s3"]
    else:
        assert sorted(result["loaded"]) == ["azure_blob", "gcs", "s3", "sftp"]


def test_layers_build_for_arm64_by_default(tmp_path: Path) -> None:
    # The deployed build: the template's default runtime (3.12) and Graviton wheels.
    artifacts = tmp_path / "layer"
    environment = {k: v for k, v in _sam_environment().items() if k != "PLATFORM_FLAGS"}
    subprocess.run(
        ["make", "-s", "-f", str(ROOT / "shared" / "Makefile"), "build-StorageSdkLayer",
         f"ARTIFACTS_DIR={artifacts}", f"RULES_FILE={EXAMPLE_RULES}"],
        env=environment, check=True, capture_output=True, timeout=300,
    )
    extensions = list((artifacts / "python").rglob("*.so"))
    assert extensions, "no compiled extension at all: the check below would prove nothing"
    aarch64 = 183  # ELF e_machine of AArch64
    machines = {int.from_bytes(path.read_bytes()[18:20], "little") for path in extensions}
    assert machines == {aarch64}
    assert any("cpython-312" in p.name or "abi3" in p.name for p in extensions)


@pytest.mark.parametrize("layer", ["SharedLayer", "StorageSdkLayer"])
def test_built_layers_carry_the_rules_file_at_opt(built: Path, layer: str) -> None:
    # /opt/rules.yaml, the template's default RulesLocation
    assert (built / layer / "rules.yaml").read_text() == EXAMPLE_RULES.read_text()


def test_built_template_still_finds_the_licence_and_readme(built: Path) -> None:
    # sam package uploads them for sam publish, named relative to the built template
    application = _built_template(built)["Metadata"]["AWS::ServerlessRepo::Application"]
    assert (built / application["LicenseUrl"]).resolve() == ROOT / "LICENSE"
    assert (built / application["ReadmeUrl"]).resolve() == ROOT / "README.md"


def test_sam_build_without_a_rules_file_fails_naming_the_example(tmp_path: Path) -> None:
    # The layer's sources as checked out, without whatever rules file the working copy holds.
    shared = tmp_path / "shared"
    shutil.copytree(ROOT / "shared", shared,
                    ignore=shutil.ignore_patterns("rules.yaml", "__pycache__"))
    template = tmp_path / "template.yaml"
    template.write_text((ROOT / "template.yaml").read_text()
                        .replace("CodeUri: functions/", f"CodeUri: {ROOT}/functions/"))
    environment = {k: v for k, v in _sam_environment().items() if k != "RULES_FILE"}
    completed = subprocess.run(
        [str(SAM), "build", "SharedLayer", "--template", str(template), "--build-dir",
         str(tmp_path / "build")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    assert "rules.example.yaml" in output


def _sam_validate(template: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SAM), "validate", "--template", str(template)], cwd=ROOT,
                          env=_sam_environment(), capture_output=True, text=True, timeout=120,
                          check=False)


def test_sam_validate_accepts_the_template() -> None:
    completed = _sam_validate(ROOT / "template.yaml")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_make_check_template_fails_on_a_broken_template() -> None:
    # What `make lint` runs, end to end, on a template with a dangling !Ref.
    broken = ROOT / "tests" / "unit" / "broken_templates" / "dangling_ref.yaml"
    completed = subprocess.run(
        ["make", "--no-print-directory", "check-template", f"TEMPLATE={broken}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode != 0
    assert "NoSuchQueue" in completed.stdout


def test_sam_validate_rejects_a_bad_sam_event_type() -> None:
    completed = _sam_validate(ROOT / "tests" / "unit" / "broken_templates" / "bad_event_type.yaml")
    assert completed.returncode != 0
    assert "SQSQueue" in completed.stdout + completed.stderr
