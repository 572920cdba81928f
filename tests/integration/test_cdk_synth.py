"""The CDK construct (infra/cdk) synthesizes offline with the real CDK CLI, and creates what
template.yaml creates: the same resources under the same names, the same function settings and
environment, and, role by role, the same IAM statements. The SAM side is translated and then
resolved for the same parameter values (every option on), so both describe one deployment.

Needs the deploy tools (`make deploy-tools`, which `make lint` runs): the CDK CLI from
node_modules and aws-cdk-lib in .venv-deploy. The synth itself takes about 10 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import convbridge
from devstack.template_check import (
    EVERY_OPTION_ON,
    EXISTING_BUCKET,
    REQUIRED_EXAMPLES,
    load_template,
    parameter_values,
    permissions,
    render,
    resolve_conditions,
    translate_sam,
    with_defaults,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_PYTHON = ROOT / ".venv-deploy" / "bin" / "python"
CDK = ROOT / "node_modules" / ".bin" / "cdk"

@pytest.fixture(autouse=True)
def _deploy_tools_installed() -> None:
    # make test installs them (through make lint); a missing tool fails, never skips
    if not (DEPLOY_PYTHON.exists() and CDK.exists()):
        pytest.fail("deploy tools not installed: run `make deploy-tools` (make lint does)")

#: Storage option -> the handler directory it needs and the SAM parameters that switch it on.
STORAGES = {
    "azure": ("azure_trigger", ("AzureAccountSecretArn", "AzureBlobEndpoint",
                                "EventGridSecretArn")),
    "gcs": ("gcs_trigger", ("GcsServiceAccountSecretArn", "PubSubServiceAccount",
                            "PubSubAudience")),
    "sftp": ("sftp_sweep", ("SftpSecretArn", "SftpHostKey")),
}


def _missing_storages() -> set[str]:
    return {name for name, (directory, _) in STORAGES.items()
            if not (ROOT / "functions" / directory / "app.py").is_file()}


def _values(bucket_mode: str = "create") -> dict[str, Any]:
    """SAM parameter values: every option on, except storages whose handler is not there."""
    values: dict[str, Any] = {**EVERY_OPTION_ON, **REQUIRED_EXAMPLES}
    if bucket_mode == "existing":
        values |= EXISTING_BUCKET
    for name in _missing_storages():
        for parameter in STORAGES[name][1]:
            values[parameter] = ""
    return values


def _cdk_config(values: dict[str, Any]) -> dict[str, Any]:
    """The same deployment as the construct's JSON configuration (infra/cdk/README.md)."""
    config: dict[str, Any] = {
        "stackName": "convbridge",
        "sourceBucketName": values["SourceBucketName"],
        "sourceBucketMode": values.get("SourceBucketMode", "create"),
        "contextSecretArn": values["ContextSecretArn"],
        "providerSecretsPrefix": values["ProviderSecretsPrefix"],
        "secretsKmsKeyArn": values["SecretsKmsKeyArn"],
        "alarmTopicArn": values["AlarmTopicArn"],
        "cloudConvertSandbox": values["CloudConvertSandbox"] == "true",
        "maxConcurrency": {"s3Events": values["S3EventsMaxConcurrency"],
                           "completions": values["CompletionMaxConcurrency"]},
        "reservedConcurrency": {
            "azureTrigger": values["AzureTriggerConcurrency"],
            "gcsTrigger": values["GcsTriggerConcurrency"],
            "sftpSweep": values["SftpSweepConcurrency"],
            "reconciler": values["ReconcilerConcurrency"],
        },
        "bundleLayers": False,
    }
    if values["AzureAccountSecretArn"]:
        config["azure"] = {"accountSecretArn": values["AzureAccountSecretArn"],
                           "blobEndpoint": values["AzureBlobEndpoint"],
                           "eventGridSecretArn": values["EventGridSecretArn"]}
    if values["GcsServiceAccountSecretArn"]:
        config["gcs"] = {"serviceAccountSecretArn": values["GcsServiceAccountSecretArn"],
                         "pushServiceAccount": values["PubSubServiceAccount"],
                         "audience": values["PubSubAudience"]}
    if values["SftpSecretArn"]:
        config["sftp"] = {"secretArn": values["SftpSecretArn"], "hostKey": values["SftpHostKey"],
                          "claimsMaxConcurrency": values.get("SftpClaimsMaxConcurrency", 5)}
    return config


# Both ways to deploy the S3 side: a bucket the stack creates, or one it only watches.
@pytest.fixture(scope="module", params=["create", "existing"])
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _values(request.param)


@pytest.fixture(scope="module")
def sam(values: dict[str, Any]) -> dict[str, Any]:
    template, problems = load_template(ROOT / "template.yaml")
    assert template is not None, problems
    return resolve_conditions(translate_sam(with_defaults(template, values)), values)


@pytest.fixture(scope="module")
def sam_params(sam: dict[str, Any], values: dict[str, Any]) -> dict[str, str]:
    return parameter_values(sam, values)


@pytest.fixture(scope="module")
def cdk(tmp_path_factory: pytest.TempPathFactory, values: dict[str, Any]) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cdk") / "cdk.out"
    environment = dict(os.environ, JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20",
                       CDK_DISABLE_VERSION_CHECK="1")
    completed = subprocess.run(
        [str(CDK), "synth", "-q", "--no-notices", "--app", f"{DEPLOY_PYTHON} app.py",
         "-c", f"convbridge={json.dumps(_cdk_config(values))}", "-o", str(out)],
        cwd=ROOT / "infra" / "cdk", env=environment, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    synthesized: dict[str, Any] = json.loads((out / "convbridge.template.json").read_text())
    return synthesized


_CDK_HASH = re.compile(r"[0-9A-F]{8}$")


def cdk_name(logical_id: str) -> str:
    """ConvBridgeS3TriggerRole7D60D366 -> S3TriggerRole (construct path and hash dropped)."""
    return _CDK_HASH.sub("", re.sub(r"^ConvBridge(Outputs)?", "", logical_id))


def sam_name(logical_id: str) -> str:
    """SharedLayer16f721f5a1 -> SharedLayer (SAM hashes layer versions' logical ids)."""
    return re.sub(r"(Layer)[0-9a-f]{10}$", r"\1", logical_id)


def _by_name(template: dict[str, Any], rename: Any) -> dict[str, dict[str, Any]]:
    return {rename(k): v for k, v in template["Resources"].items()
            if v["Type"] not in {"AWS::Lambda::Permission", "AWS::CDK::Metadata"}}


def _rendered(resource: dict[str, Any], params: dict[str, str], rename: Any,
              keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    properties = resource.get("Properties", {})
    chosen = properties if keys is None else {k: properties.get(k) for k in keys}
    result: dict[str, Any] = render(chosen, params, rename)
    # SAM writes some properties out empty (EventInvokeConfig's DestinationConfig: {}).
    return {k: v for k, v in result.items() if v != {}}


def test_every_storage_is_compared() -> None:
    assert not _missing_storages(), "functions/<handler>/app.py missing for some storage"


def test_same_resources_under_the_same_names(cdk: dict[str, Any], sam: dict[str, Any]) -> None:
    cdk_types = Counter(v["Type"] for v in cdk["Resources"].values())
    sam_types = Counter(v["Type"] for v in sam["Resources"].values())
    assert cdk_types == sam_types
    cdk_names = {k: v["Type"] for k, v in _by_name(cdk, cdk_name).items()}
    sam_names = {k: v["Type"] for k, v in _by_name(sam, sam_name).items()}
    assert cdk_names == sam_names
    # CDK's bootstrap-version parameter and rule are its own; nothing else is added.
    assert set(cdk.get("Parameters", {})) == {"BootstrapVersion"}


FUNCTION_KEYS = ("Description", "Runtime", "Architectures", "Handler", "Timeout", "MemorySize",
                 "Environment", "ReservedConcurrentExecutions", "Layers", "LoggingConfig",
                 "Role")


def test_functions_match(cdk: dict[str, Any], sam: dict[str, Any],
                         sam_params: dict[str, str]) -> None:
    cdk_resources, sam_resources = _by_name(cdk, cdk_name), _by_name(sam, sam_name)
    functions = [k for k, v in sam_resources.items() if v["Type"] == "AWS::Lambda::Function"]
    assert len(functions) >= 2
    for name in functions:
        assert (_rendered(cdk_resources[name], sam_params, cdk_name, FUNCTION_KEYS)
                == _rendered(sam_resources[name], sam_params, sam_name, FUNCTION_KEYS)), name


def test_roles_hold_the_same_statements(cdk: dict[str, Any], sam: dict[str, Any],
                                        sam_params: dict[str, str]) -> None:
    cdk_ids = {cdk_name(k): k for k, v in cdk["Resources"].items()
               if v["Type"] == "AWS::IAM::Role"}
    sam_ids = {k for k, v in sam["Resources"].items() if v["Type"] == "AWS::IAM::Role"}
    assert set(cdk_ids) == sam_ids
    for name in sorted(sam_ids):
        cdk_role = cdk["Resources"][cdk_ids[name]]["Properties"]
        sam_role = sam["Resources"][name]["Properties"]
        assert (permissions(cdk, cdk_ids[name], sam_params, cdk_name)
                == permissions(sam, name, sam_params, sam_name)), name
        for key in ("AssumeRolePolicyDocument", "ManagedPolicyArns", "MaxSessionDuration"):
            assert (render(cdk_role.get(key), sam_params, cdk_name)
                    == render(sam_role.get(key), sam_params, sam_name)), (name, key)
        assert ({p["PolicyName"] for p in cdk_role.get("Policies", [])}
                == {p["PolicyName"] for p in sam_role.get("Policies", [])}), name


def test_invoke_permissions_match(cdk: dict[str, Any], sam: dict[str, Any],
                                  sam_params: dict[str, str]) -> None:
    def permissions_of(template: dict[str, Any], rename: Any) -> Counter[str]:
        found: Counter[str] = Counter()
        for resource in template["Resources"].values():
            if resource["Type"] == "AWS::Lambda::Permission":
                properties = render(resource["Properties"], sam_params, rename)
                # FunctionName: SAM Refs the function, CDK uses its ARN; both name it.
                properties["FunctionName"] = properties["FunctionName"].removesuffix(".Arn}")
                properties["FunctionName"] = properties["FunctionName"].removesuffix("}")
                found[json.dumps(properties, sort_keys=True)] += 1
        return found

    assert permissions_of(cdk, cdk_name) == permissions_of(sam, sam_name)


@pytest.mark.parametrize("type_", [
    "AWS::SQS::Queue", "AWS::SQS::QueuePolicy", "AWS::S3::Bucket", "AWS::S3::BucketPolicy",
    "AWS::DynamoDB::Table", "AWS::Logs::LogGroup", "AWS::Lambda::Url",
    "AWS::Lambda::EventSourceMapping", "AWS::Lambda::EventInvokeConfig",
])
def test_same_properties(cdk: dict[str, Any], sam: dict[str, Any], sam_params: dict[str, str],
                         type_: str) -> None:
    cdk_resources, sam_resources = _by_name(cdk, cdk_name), _by_name(sam, sam_name)
    names = [k for k, v in sam_resources.items() if v["Type"] == type_]
    optional = {"AWS::Lambda::EventInvokeConfig"}
    if sam_params["SourceBucketMode"] == "existing":
        optional |= {"AWS::S3::Bucket", "AWS::S3::BucketPolicy"}
    assert names or type_ in optional
    for name in names:
        cdk_properties = _rendered(cdk_resources[name], sam_params, cdk_name)
        sam_properties = _rendered(sam_resources[name], sam_params, sam_name)
        if type_ == "AWS::Lambda::Url":
            # SAM Refs the function, CDK names its ARN.
            cdk_properties["TargetFunctionArn"] = cdk_properties["TargetFunctionArn"].replace(
                ".Arn}", "}")
        assert cdk_properties == sam_properties, name
        for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
            assert (cdk_resources[name].get(attribute, "Delete")
                    == sam_resources[name].get(attribute, "Delete")), (name, attribute)


def test_layers_match(cdk: dict[str, Any], sam: dict[str, Any],
                      sam_params: dict[str, str]) -> None:
    keys = ("Description", "LayerName", "CompatibleRuntimes", "CompatibleArchitectures")
    cdk_resources, sam_resources = _by_name(cdk, cdk_name), _by_name(sam, sam_name)
    names = [k for k, v in sam_resources.items() if v["Type"] == "AWS::Lambda::LayerVersion"]
    for name in names:
        assert (_rendered(cdk_resources[name], sam_params, cdk_name, keys)
                == _rendered(sam_resources[name], sam_params, sam_name, keys)), name


def test_schedule_matches(cdk: dict[str, Any], sam: dict[str, Any],
                          sam_params: dict[str, str]) -> None:
    def rules(template: dict[str, Any], rename: Any) -> list[tuple[str, str]]:
        found = []
        for resource in template["Resources"].values():
            if (resource["Type"] == "AWS::Events::Rule"
                    and "ScheduleExpression" in resource["Properties"]):
                properties = render(resource["Properties"], sam_params, rename)
                (target,) = properties["Targets"]
                found.append((properties["ScheduleExpression"], target["Arn"]))
        return found

    assert rules(cdk, cdk_name) == rules(sam, sam_name)


def test_existing_bucket_rule_matches(cdk: dict[str, Any], sam: dict[str, Any],
                                      sam_params: dict[str, str]) -> None:
    def rules(template: dict[str, Any], rename: Any) -> dict[str, Any]:
        return {rename(k): render(v["Properties"], sam_params, rename)
                for k, v in template["Resources"].items()
                if v["Type"] == "AWS::Events::Rule" and "EventPattern" in v["Properties"]}

    found = rules(cdk, cdk_name)
    assert found == rules(sam, sam_name)
    assert len(found) == (sam_params["SourceBucketMode"] == "existing")


def _alarm_shape(resource: dict[str, Any], params: dict[str, str], rename: Any) -> Any:
    properties = render(resource["Properties"], params, rename)
    shape = {k: properties.get(k) for k in (
        "Namespace", "MetricName", "Dimensions", "Statistic", "Period", "EvaluationPeriods",
        "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
        "AlarmActions")}
    metrics: list[tuple[Any, ...]] = []
    for metric in properties.get("Metrics", []):
        if "Expression" in metric:
            metrics.append(("expression", metric["Expression"], metric.get("Period")))
        else:
            stat = metric["MetricStat"]
            metrics.append(("metric", metric["Id"], stat["Metric"]["MetricName"],
                            json.dumps(stat["Metric"]["Dimensions"]), stat["Stat"],
                            stat["Period"]))
    shape["Metrics"] = sorted(map(str, metrics))
    return shape


def test_alarms_match(cdk: dict[str, Any], sam: dict[str, Any],
                      sam_params: dict[str, str]) -> None:
    cdk_resources, sam_resources = _by_name(cdk, cdk_name), _by_name(sam, sam_name)
    names = [k for k, v in sam_resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(names) >= 5
    for name in names:
        assert (_alarm_shape(cdk_resources[name], sam_params, cdk_name)
                == _alarm_shape(sam_resources[name], sam_params, sam_name)), name


def test_dashboards_are_the_same(cdk: dict[str, Any], sam: dict[str, Any],
                                 sam_params: dict[str, str]) -> None:
    def body(template: dict[str, Any], rename: Any) -> Any:
        (dashboard,) = [v for v in template["Resources"].values()
                        if v["Type"] == "AWS::CloudWatch::Dashboard"]
        return json.loads(render(dashboard["Properties"]["DashboardBody"], sam_params, rename))

    assert body(cdk, cdk_name) == body(sam, sam_name)


def test_outputs_match(cdk: dict[str, Any], sam: dict[str, Any],
                       sam_params: dict[str, str]) -> None:
    cdk_outputs = {cdk_name(k): render(v["Value"], sam_params, cdk_name)
                   for k, v in cdk["Outputs"].items()}
    sam_outputs = {k: render(v["Value"], sam_params, sam_name) for k, v in sam["Outputs"].items()}
    assert cdk_outputs == sam_outputs


_REFUSED = """
import json, sys
import aws_cdk as cdk
from convbridge_cdk import ConvBridge, props_from_config
for config in json.loads(sys.argv[1]):
    try:
        ConvBridge(cdk.Stack(cdk.App(), "s"), "ConvBridge", props_from_config(config))
    except ValueError as exc:
        print(json.dumps(str(exc)))
    else:
        print(json.dumps(None))
"""


def test_construct_refuses_what_the_template_refuses_for_provider_secrets(
    values: dict[str, Any],
) -> None:
    # The prefix becomes <prefix>* in the grant, as in template.yaml's AllowedPattern; and a
    # configuration still listing per-provider ARNs is refused rather than deployed without them.
    base = {**_cdk_config(values), "azure": None, "gcs": None, "sftp": None}
    configs = [dict(base, providerSecretsPrefix=prefix)
               for prefix in ("convbridge/*", "convbridge", "convbridge-", "/", "a//b/")]
    configs.append(dict(base, providerSecretArns={"cloudconvert": values["ContextSecretArn"]}))
    configs.append(base)
    completed = subprocess.run(
        [str(DEPLOY_PYTHON), "-c", _REFUSED, json.dumps(configs)],
        cwd=ROOT / "infra" / "cdk", env=dict(os.environ, PYTHONPATH=str(ROOT / "infra" / "cdk"),
                                             JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20"),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    refusals = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(refusals) == len(configs)
    assert all(r is not None and "provider_secrets_prefix" in r for r in refusals[:-2]), refusals
    assert refusals[-2] is not None and "providerSecretsPrefix" in refusals[-2]
    assert refusals[-1] is None  # the same configuration with a valid prefix is accepted


def test_the_construct_carries_the_package_version() -> None:
    completed = subprocess.run(
        [str(DEPLOY_PYTHON), "-c", "import convbridge_cdk; print(convbridge_cdk.__version__)"],
        cwd=ROOT / "infra" / "cdk",
        env=dict(os.environ, JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20"),
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == convbridge.__version__


_OUTSIDE_APP = """\
import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from convbridge_cdk import ConvBridge, ConvBridgeProps
app = cdk.App(); stack = cdk.Stack(app, "outside")
ConvBridge(stack, "Bridge", ConvBridgeProps(
    source_bucket=s3.Bucket.from_bucket_name(stack, "Inbox", "existing-inbox"),
    context_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:cb-AbCdEf",
    bundle_layers=False))
app.synth()
"""


def test_the_construct_installs_as_a_wheel_and_synthesizes_outside_the_repository(
    tmp_path: Path,
) -> None:
    # A fresh virtualenv (no system site-packages) that sees aws-cdk-lib through a .pth onto
    # .venv-deploy (installing it again takes minutes), and convbridge_cdk only from the wheel.
    wheels, venv, app = tmp_path / "wheels", tmp_path / "venv", tmp_path / "app"

    def run(*command: str | Path, cwd: Path = tmp_path) -> None:
        done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True,
                              text=True, timeout=300, check=False,
                              env=dict(os.environ, CDK_DISABLE_VERSION_CHECK="1", PYTHONPATH="",
                                       JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20"))
        assert done.returncode == 0, done.stderr[-3000:]

    run(DEPLOY_PYTHON, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels,
        ROOT / "infra" / "cdk")
    (wheel,) = wheels.glob("convbridge_cdk-*.whl")
    assert wheel.name.startswith(f"convbridge_cdk-{convbridge.__version__}-")
    run(DEPLOY_PYTHON, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (deploy_site,) = (ROOT / ".venv-deploy" / "lib").glob("python3*/site-packages")
    (site / "deploy_tools.pth").write_text(f"{deploy_site}\n")
    run(python, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel)
    app.mkdir()
    (app / "app.py").write_text(_OUTSIDE_APP)
    run(CDK, "synth", "-q", "--no-notices", "--app", f"{python} app.py", "-o", app / "out",
        cwd=app)

    template = json.loads((app / "out" / "outside.template.json").read_text())
    types = Counter(v["Type"] for v in template["Resources"].values())
    assert types["AWS::S3::Bucket"] == 0 and types["AWS::Lambda::Function"] == 3
    (rule,) = [v["Properties"] for v in template["Resources"].values()
               if v["Type"] == "AWS::Events::Rule" and "EventPattern" in v["Properties"]]
    assert rule["EventPattern"]["detail"]["bucket"]["name"] == ["existing-inbox"]
    # The handlers and the package came from the wheel into the cloud assembly's assets.
    assets = {p.relative_to(app / "out").parts[1:] for p in (app / "out").rglob("*.py")}
    assert ("app.py",) in assets and ("convbridge", "bridge.py") in assets
