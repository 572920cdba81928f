"""The SAM template passes the offline deployment check, the check catches the faults it
exists for (each broken variant is the real template with one edit, so a passing check here
means it would pass there too), and the translated template keeps the least-privilege
promises of the design: no wildcard resource for S3, Secrets Manager or KMS, a grant role only
the trigger can assume, and no listing anywhere in what a provider can be handed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.template_check import check_template, load_template, main, translate_sam

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

SENSITIVE_SERVICES = ("s3:", "secretsmanager:", "kms:")
SECRET_PARAMETERS = [{"Ref": "CloudConvertSecretArn"}, {"Ref": "ContextSecretArn"}]


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    template, problems = load_template(TEMPLATE)
    assert template is not None, problems
    return translate_sam(template)


def _resources(translated: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in translated["Resources"].items() if v["Type"] == type_}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _branches(statement: Any) -> Iterator[dict[str, Any]]:
    """Both arms of a conditional statement: least privilege must hold whichever is deployed."""
    if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
        _, when_true, when_false = statement["Fn::If"]
        for arm in (when_true, when_false):
            if arm != {"Ref": "AWS::NoValue"}:
                yield from _branches(arm)
    else:
        yield statement


def _policy_documents(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    properties = resource.get("Properties", {})
    if resource["Type"] == "AWS::IAM::Role":
        for policy in properties.get("Policies", []):
            yield policy["PolicyDocument"]
    elif resource["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy",
                              "AWS::S3::BucketPolicy"}:
        yield properties["PolicyDocument"]


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for document in _policy_documents(resource):
        for statement in _as_list(document["Statement"]):
            found.extend(_branches(statement))
    return found


def _all_statements(translated: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (logical_id, statement)
        for logical_id, resource in translated["Resources"].items()
        for statement in _statements(resource)
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    return [action.lower() for action in _as_list(statement.get("Action", []))]


# --- the check itself ---------------------------------------------------------------------


def test_real_template_is_clean() -> None:
    assert check_template(TEMPLATE) == []


def test_main_reports_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(TEMPLATE)]) == 0
    assert capsys.readouterr().out.strip() == f"{TEMPLATE}: clean"


@pytest.mark.parametrize(
    ("original", "broken", "named"),
    [
        pytest.param(
            "Events: s3:ObjectCreated:*", "Events: s3:ObjectMade", ["s3:ObjectMade"],
            id="bad-s3-event-type",
        ),
        pytest.param(
            "Value: !Ref WatchedPrefix", "Value: !Ref NoSuchThing", ["NoSuchThing"],
            id="dangling-ref",
        ),
        pytest.param(
            "Runtime: !Ref PythonRuntime", "Runtime: python2.0", ["Runtime", "python2.0"],
            id="wrong-runtime",
        ),
        pytest.param(
            "AuthType: NONE", "AuthType: OPEN", ["FunctionUrlConfig", "AuthType"],
            id="bad-function-url-auth-type",
        ),
    ],
)
def test_broken_variant_is_reported(
    tmp_path: Path, original: str, broken: str, named: list[str]
) -> None:
    text = TEMPLATE.read_text()
    # Exactly one occurrence, or the edit would not be the single fault the test claims.
    assert text.count(original) == 1, f"template no longer contains {original!r} once"
    variant = tmp_path / "template.yaml"
    variant.write_text(text.replace(original, broken))

    problems = check_template(variant)

    assert any(all(word in problem for word in named) for problem in problems), problems
    assert main([str(variant)]) == 1


@pytest.mark.parametrize(
    "location", ["ssm:/convbridge/rules", "s3://config-bucket/convbridge/rules.yaml"]
)
def test_rules_outside_the_layer_are_clean(tmp_path: Path, location: str) -> None:
    # cfn-lint resolves the conditional rules-reading grants with the parameter default, so
    # this exercises the Split/Select that turns the location into an ARN.
    text = TEMPLATE.read_text()
    original = "Default: /opt/rules.yaml"
    assert text.count(original) == 1
    variant = tmp_path / "template.yaml"
    variant.write_text(text.replace(original, f"Default: {location}"))
    assert check_template(variant) == []


def test_wildcard_in_watched_prefix_is_rejected(tmp_path: Path) -> None:
    # The prefix is pasted into an IAM resource ARN; a "*" in it would widen the grant.
    text = TEMPLATE.read_text()
    original = "Default: inbox/"
    assert text.count(original) == 1
    variant = tmp_path / "template.yaml"
    variant.write_text(text.replace(original, "Default: inbox/*"))
    problems = check_template(variant)
    assert any("WatchedPrefix" in problem for problem in problems), problems


def test_unparsable_template_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    variant = tmp_path / "template.yaml"
    variant.write_text("Resources:\n  A: [unclosed\n")
    problems = check_template(variant)
    assert problems and str(variant) in problems[0]


# --- least privilege over the translated template -----------------------------------------


def test_no_wildcard_resource_for_sensitive_actions(translated: dict[str, Any]) -> None:
    offenders = []
    for logical_id, statement in _all_statements(translated):
        actions = _actions(statement)
        sensitive = any(a == "*" or a.startswith(SENSITIVE_SERVICES) for a in actions)
        if not sensitive:
            continue
        resources = _as_list(statement.get("Resource", []))
        if "NotResource" in statement or "*" in resources:
            offenders.append((logical_id, statement))
    assert offenders == []


def test_only_the_logs_managed_policy_is_attached(translated: dict[str, Any]) -> None:
    # A managed policy is a statement this test cannot see; only the logs one is allowed.
    for role in _resources(translated, "AWS::IAM::Role").values():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            text = arn if isinstance(arn, str) else arn.get("Fn::Sub", "")
            assert text.endswith(":iam::aws:policy/service-role/AWSLambdaBasicExecutionRole")


def test_secrets_are_exactly_the_two_configured(translated: dict[str, Any]) -> None:
    secret_statements = [
        statement
        for _, statement in _all_statements(translated)
        if any(a.startswith("secretsmanager:") for a in _actions(statement))
    ]
    # One for the trigger's role, one for the webhook's.
    assert len(secret_statements) == 2
    for statement in secret_statements:
        assert _actions(statement) == ["secretsmanager:getsecretvalue"]
        assert sorted(map(str, statement["Resource"])) == sorted(map(str, SECRET_PARAMETERS))


def test_grant_role_trusts_only_the_trigger_role(translated: dict[str, Any]) -> None:
    grant = translated["Resources"]["GrantRole"]["Properties"]
    statements = grant["AssumeRolePolicyDocument"]["Statement"]
    assert statements == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::GetAtt": ["S3TriggerRole", "Arn"]}},
            "Action": "sts:AssumeRole",
        }
    ]
    assert grant["MaxSessionDuration"] == 3600


def test_grant_role_cannot_list_or_delete(translated: dict[str, Any]) -> None:
    actions = {a for s in _statements(translated["Resources"]["GrantRole"]) for a in _actions(s)}
    assert actions == {"s3:getobject", "s3:putobject"}
    assert "s3:listbucket" not in actions


def test_only_the_trigger_may_assume_the_grant_role(translated: dict[str, Any]) -> None:
    assumers = [
        (logical_id, statement)
        for logical_id, statement in _all_statements(translated)
        if "sts:assumerole" in _actions(statement)
    ]
    assert assumers == [
        (
            "S3TriggerAssumeGrantRolePolicy",
            {
                "Sid": "MintScopedGrants",
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": {"Fn::GetAtt": ["GrantRole", "Arn"]},
            },
        )
    ]
    policy = translated["Resources"]["S3TriggerAssumeGrantRolePolicy"]["Properties"]
    assert policy["Roles"] == [{"Ref": "S3TriggerRole"}]


# --- wiring the code depends on --------------------------------------------------------------


def _environment(translated: dict[str, Any], logical_id: str) -> dict[str, Any]:
    function = translated["Resources"][logical_id]
    assert function["Type"] == "AWS::Lambda::Function"
    variables: dict[str, Any] = function["Properties"]["Environment"]["Variables"]
    return variables


def test_environment_variables(translated: dict[str, Any]) -> None:
    common = {
        "POWERTOOLS_SERVICE_NAME": "convbridge",
        "LOG_LEVEL": {"Ref": "LogLevel"},
        "CONVBRIDGE_RULES": {"Ref": "RulesLocation"},
        "CONVBRIDGE_CONTEXT_SECRET": {"Ref": "ContextSecretArn"},
        "CONVBRIDGE_SECRET_CLOUDCONVERT": {"Ref": "CloudConvertSecretArn"},
        "CONVBRIDGE_READ_GRANT_SECONDS": "900",
        "CONVBRIDGE_WRITE_GRANT_SECONDS": "3600",
    }
    trigger_only = {
        "CONVBRIDGE_WEBHOOK_URL": {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]},
        "CONVBRIDGE_GRANT_ROLE_ARN": {"Fn::GetAtt": ["GrantRole", "Arn"]},
    }
    assert _environment(translated, "S3TriggerFunction") == common | trigger_only
    assert _environment(translated, "WebhookFunction") == common


def test_functions_run_on_arm64_with_the_layer(translated: dict[str, Any]) -> None:
    functions = _resources(translated, "AWS::Lambda::Function")
    assert set(functions) == {"S3TriggerFunction", "WebhookFunction"}
    for function in functions.values():
        properties = function["Properties"]
        assert properties["Architectures"] == ["arm64"]
        assert properties["Runtime"] == {"Ref": "PythonRuntime"}
        (layer,) = properties["Layers"]
        assert layer["Ref"].startswith("SharedLayer")


def test_webhook_url_is_public_and_output(translated: dict[str, Any]) -> None:
    url = translated["Resources"]["WebhookFunctionUrl"]
    assert url["Type"] == "AWS::Lambda::Url"
    assert url["Properties"]["AuthType"] == "NONE"
    outputs = translated["Outputs"]
    assert outputs["WebhookUrl"]["Value"] == {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]}
    assert set(outputs) == {"WebhookUrl", "SourceBucket", "GrantRoleArn"}


def test_bucket_notifies_only_for_the_watched_prefix(translated: dict[str, Any]) -> None:
    bucket = translated["Resources"]["SourceBucket"]["Properties"]
    (notification,) = bucket["NotificationConfiguration"]["LambdaConfigurations"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": {"Ref": "WatchedPrefix"}}
    ]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())


# --- the layer build ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_layer_build_copies_the_package_without_byte_code(tmp_path: Path) -> None:
    artifacts = tmp_path / "layer"
    # PIP=true skips the dependency download (network); the copy step is what is checked here.
    subprocess.run(
        ["make", "-s", "-f", str(ROOT / "shared" / "Makefile"), "build-SharedLayer",
         f"ARTIFACTS_DIR={artifacts}", "PIP=true"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )
    package = artifacts / "python" / "convbridge"
    assert (package / "__init__.py").is_file()
    assert not list(package.rglob("__pycache__"))
    assert not list(package.rglob("*.pyc"))
