"""The SAM template passes the offline deployment check (as written and with every option on),
the check catches the faults it exists for (each broken variant is the real template with one
edit, so a passing check here means it would pass there too; tests/unit/broken_templates holds
small standalone ones), and the template as it would be deployed keeps the least-privilege
promises of the design: each function's role holds exactly what its code calls, no wildcard
resource for S3, Secrets Manager, KMS, DynamoDB or SQS, a grant role only the S3 trigger can
assume and that can never list or delete. It also pins the wiring the code relies on (the
environment per function, Function URLs, the SFTP schedule), the delivery guarantees (queues
with partial batch failures, dead-letter queues and alarms) and the dashboard's metric names.

"As deployed" means translated by aws-sam-translator and then resolved for a set of parameter
values (conditions evaluated, ``Fn::If`` arms chosen) by devstack.template_check, twice: with
the defaults (S3 and nothing optional) and with every option on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convbridge.settings import Settings, environment_count
from devstack.template_check import (
    EVERY_OPTION_ON,
    EXISTING_BUCKET,
    REQUIRED_EXAMPLES,
    check_template,
    evaluate_conditions,
    load_template,
    main,
    parameter_values,
    permissions,
    render,
    resolve_conditions,
    translate_sam,
    with_defaults,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
BROKEN = Path(__file__).resolve().parent / "broken_templates"
EXAMPLE_RULES = ROOT / "rules.example.yaml"

SENSITIVE_SERVICES = ("s3:", "secretsmanager:", "kms:", "dynamodb:", "sqs:", "ssm:", "sts:")
ALL_ON = {**EVERY_OPTION_ON, **REQUIRED_EXAMPLES}
DEFAULTS = dict(REQUIRED_EXAMPLES)

FUNCTIONS = {
    "S3TriggerFunction": "S3TriggerRole",
    "WebhookFunction": "WebhookFunctionRole",
    "AzureTriggerFunction": "AzureTriggerRole",
    "GcsTriggerFunction": "GcsTriggerRole",
    "SftpSweepFunction": "SftpSweepRole",
    "ReconcilerFunction": "ReconcilerRole",
}
OPTIONAL_FUNCTIONS = {"AzureTriggerFunction", "GcsTriggerFunction", "SftpSweepFunction"}


def _source() -> dict[str, Any]:
    template, problems = load_template(TEMPLATE)
    assert template is not None, problems
    return template


def _deployed(values: dict[str, Any]) -> dict[str, Any]:
    translated = translate_sam(with_defaults(_source(), values))
    return resolve_conditions(translated, values)


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    """The translated template with its conditions still in it."""
    return translate_sam(_source())


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    """S3 only, the defaults: what `sam deploy` makes without any optional parameter."""
    return _deployed(DEFAULTS)


@pytest.fixture(scope="module")
def deployed_all() -> dict[str, Any]:
    """Every storage, provider and option switched on."""
    return _deployed(ALL_ON)


@pytest.fixture(scope="module")
def params_all(deployed_all: dict[str, Any]) -> dict[str, str]:
    return parameter_values(deployed_all, ALL_ON)


def _resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


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
                              "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"}:
        yield properties["PolicyDocument"]


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for document in _policy_documents(resource):
        for statement in _as_list(document["Statement"]):
            found.extend(_branches(statement))
    return found


def _all_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (logical_id, statement)
        for logical_id, resource in template["Resources"].items()
        for statement in _statements(resource)
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    return [action.lower() for action in _as_list(statement.get("Action", []))]


def _variant(tmp_path: Path, original: str, replacement: str) -> Path:
    text = TEMPLATE.read_text()
    # Exactly one occurrence, or the edit would not be the single fault the test claims.
    assert text.count(original) == 1, f"template no longer contains {original!r} once"
    variant = tmp_path / "template.yaml"
    variant.write_text(text.replace(original, replacement))
    return variant


# --- the check itself ---------------------------------------------------------------------


def test_real_template_is_clean() -> None:
    assert check_template(TEMPLATE) == []


def test_main_reports_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(TEMPLATE)]) == 0
    assert capsys.readouterr().out.strip() == f"{TEMPLATE}: clean"


def test_every_option_on_switches_every_optional_part_on() -> None:
    # Otherwise the second pass of the check would lint less than the whole template.
    truth = evaluate_conditions(_source(), ALL_ON)
    off = {name for name, value in truth.items() if not value}
    # The rules file is in the layer by default; the two other places are tested below, and
    # the existing-bucket mode (which leaves the bucket out) has a pass of its own.
    assert off == {"RulesInSsm", "RulesInS3", "ExistingBucket"}
    defaults = evaluate_conditions(_source(), DEFAULTS)
    assert {name for name, value in defaults.items() if value} == {"CreateBucket"}


@pytest.mark.parametrize(
    ("original", "broken", "named"),
    [
        pytest.param(
            "Event: s3:ObjectCreated:*", "Event: s3:ObjectMade", ["s3:ObjectMade"],
            id="bad-s3-event-type",
        ),
        pytest.param(
            "Type: SQS\n          Properties:\n            Queue: !GetAtt S3EventsQueue",
            "Type: SQSQueue\n          Properties:\n            Queue: !GetAtt S3EventsQueue",
            ["SQSQueue"],
            id="bad-sam-event-type",
        ),
        pytest.param(
            "Value: !Ref WatchedPrefix", "Value: !Ref NoSuchThing", ["NoSuchThing"],
            id="dangling-ref",
        ),
        pytest.param(
            # In a function that only exists with the SFTP option on: the second pass finds it.
            "CONVBRIDGE_SFTP_HOST_KEY: !Ref SftpHostKey\n",
            "CONVBRIDGE_SFTP_HOST_KEY: !Ref SftpHostKeys\n",
            ["SftpHostKeys"],
            id="dangling-ref-in-optional-function",
        ),
        pytest.param(
            "Runtime: !Ref PythonRuntime", "Runtime: python2.0", ["Runtime", "python2.0"],
            id="wrong-runtime",
        ),
        pytest.param(
            "AuthType: NONE\n      Events:", "AuthType: OPEN\n      Events:",
            ["FunctionUrlConfig", "AuthType"],
            id="bad-function-url-auth-type",
        ),
        pytest.param(
            "Schedule: !Ref SftpSweepSchedule", "Schedule: rate(5 minute)",
            ["ScheduleExpression", "minute"],
            id="bad-schedule-expression",
        ),
        pytest.param(
            "Condition: SftpEnabled\n    Properties:\n      Description: Sweeps",
            "Condition: SftpEnable\n    Properties:\n      Description: Sweeps",
            ["SftpEnable"],
            id="unknown-condition",
        ),
    ],
)
def test_broken_variant_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], original: str, broken: str,
    named: list[str],
) -> None:
    variant = _variant(tmp_path, original, broken)
    # main() is what `make lint` runs: non-zero, one line per problem.
    assert main([str(variant)]) == 1
    problems = capsys.readouterr().out.splitlines()
    assert any(all(word in problem for word in named) for problem in problems), problems


def _broken_templates() -> list[Path]:
    return sorted(BROKEN.glob("*.yaml"))


def _expectation(path: Path) -> list[str]:
    """The words a broken template's report must contain: its `# expect:` header line."""
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return [word.strip() for word in line.removeprefix("# expect:").split(",")]
    raise AssertionError(f"{path.name} has no '# expect:' line")


def test_broken_templates_exist() -> None:
    assert {p.stem for p in _broken_templates()} >= {
        "bad_event_type", "dangling_ref", "wrong_runtime", "bad_schedule",
        "bad_s3_notification_event",
    }


@pytest.mark.parametrize("path", _broken_templates(), ids=lambda p: p.stem)
def test_broken_template_fails_the_check(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    assert main([str(path)]) == 1
    problems = capsys.readouterr().out.splitlines()
    words = _expectation(path)
    assert any(all(word in problem for word in words) for problem in problems), problems


@pytest.mark.parametrize(
    "location", ["ssm:/convbridge/rules", "s3://config-bucket/convbridge/rules.yaml"]
)
def test_rules_outside_the_layer_are_clean(tmp_path: Path, location: str) -> None:
    # cfn-lint resolves the conditional rules-reading grants with the parameter default, so
    # this exercises the Split/Select that turns the location into an ARN.
    variant = _variant(tmp_path, "Default: /opt/rules.yaml", f"Default: {location}")
    assert check_template(variant) == []


def test_wildcard_in_watched_prefix_is_rejected(tmp_path: Path) -> None:
    # The prefix is pasted into an IAM resource ARN; a "*" in it would widen the grant.
    variant = _variant(tmp_path, "Default: inbox/", "Default: inbox/*")
    problems = check_template(variant)
    assert any("WatchedPrefix" in problem for problem in problems), problems


def test_unparsable_template_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    variant = tmp_path / "template.yaml"
    variant.write_text("Resources:\n  A: [unclosed\n")
    problems = check_template(variant)
    assert problems and str(variant) in problems[0]


def test_rules_refuse_half_configured_storages() -> None:
    # CloudFormation evaluates Rules before creating anything; a storage secret without the
    # settings that go with it stops the deployment there.
    rules = _source()["Rules"]
    assert set(rules) == {"AzureSettings", "GcsSettings", "SftpSettings"}
    required = {
        "AzureSettings": {"EventGridSecretArn"},
        "GcsSettings": {"PubSubServiceAccount"},
        "SftpSettings": {"SftpHostKey"},
    }
    for name, parameters in required.items():
        asserted = {
            a["Assert"]["Fn::Not"][0]["Fn::Equals"][0]["Ref"] for a in rules[name]["Assertions"]
        }
        assert asserted == parameters, name


# --- least privilege, as deployed ----------------------------------------------------------

BUCKET = "arn:${AWS::Partition}:s3:::convbridge-demo-bucket"
WATCHED = f"{BUCKET}/inbox/*"
OBJECTS = f"{BUCKET}/*"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:convbridge/{}-AbCdEf"
#: The one grant on the provider secrets: everything under the prefix, in this account and region.
PROVIDER_SECRETS = ("arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
                    ":secret:{}*")
DEFAULT_PREFIX = "convbridge/providers/"
ALL_ON_PREFIX = str(EVERY_OPTION_ON["ProviderSecretsPrefix"])
GET_SECRET = "secretsmanager:getsecretvalue"
DYNAMODB = ("dynamodb:getitem", "dynamodb:putitem", "dynamodb:updateitem", "dynamodb:deleteitem")
SQS_CONSUME = ("sqs:receivemessage", "sqs:deletemessage", "sqs:getqueueattributes")
KMS_CONDITION = json.dumps(
    {"StringEquals": {"kms:ViaService": "secretsmanager.${AWS::Region}.amazonaws.com"}}
)


def _core(prefix: str, kms: bool) -> set[tuple[str, str, str]]:
    """BridgeCorePolicy: every function submits or settles jobs, so every one reads the context
    key and the provider secrets under their prefix (secrets.py get_secret_value), and makes
    the claims calls of Powertools' DynamoDBPersistenceLayer (get/put/update/delete_item) on
    the table."""
    found = {(GET_SECRET, SECRET.format("context"), "")}
    found.add((GET_SECRET, PROVIDER_SECRETS.replace("{}", prefix), ""))
    found |= {(action, "${IdempotencyTable.Arn}", "") for action in DYNAMODB}
    if kms:
        found.add(("kms:decrypt", str(EVERY_OPTION_ON["SecretsKmsKeyArn"]), KMS_CONDITION))
    return found


def _s3_trigger() -> set[tuple[str, str, str]]:
    """storage/s3.py on the submit path: head_object and presigned get_object on the source
    (GetObject, and ListBucket so a vanished source reads as 404), put_object for records,
    copy_object + delete_object for failure policy "move" on rejects, assume_role for grants;
    the event source mapping consumes the S3 events queue; backpressure.py re-sends a deferred
    event to it (get_queue_url, send_message). Retry events (pipeline/retry.py) read failure
    reports and moved sources, copy them back and delete them, wherever the rules put
    failures."""
    return {
        ("s3:getobject", WATCHED, ""),
        ("s3:getobject", OBJECTS, ""),
        ("s3:listbucket", BUCKET, ""),
        ("s3:putobject", OBJECTS, ""),
        ("s3:deleteobject", WATCHED, ""),
        ("s3:deleteobject", OBJECTS, ""),
        ("sts:assumerole", "${GrantRole.Arn}", ""),
        ("sqs:getqueueurl", "${S3EventsQueue.Arn}", ""),
        ("sqs:sendmessage", "${S3EventsQueue.Arn}", ""),
    } | {(action, "${S3EventsQueue.Arn}", "") for action in SQS_CONSUME}


def _webhook(storage_secrets: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """The settle path: head/get_object on records and outputs (+ ListBucket for 404s), put_object
    and the multipart calls for records and relays (PutObject), abort_multipart_upload when a
    relay fails, copy_object + delete_object for "move"; webhook.py send_message to the
    completion queue, which its event source mapping consumes; and the storage secrets of the
    other clouds, whose jobs it writes back."""
    return {
        ("s3:getobject", OBJECTS, ""),
        ("s3:putobject", OBJECTS, ""),
        ("s3:abortmultipartupload", OBJECTS, ""),
        ("s3:listbucket", BUCKET, ""),
        ("s3:deleteobject", WATCHED, ""),
        ("sqs:sendmessage", "${CompletionQueue.Arn}", ""),
    } | {(action, "${CompletionQueue.Arn}", "") for action in SQS_CONSUME} | {
        (GET_SECRET, SECRET.format(name), "") for name in storage_secrets
    }


def _sftp_sweep() -> set[tuple[str, str, str]]:
    """triggers/sftp_sweep.py: the SFTP account secret; send_message_batch of each claim to
    the claims queue (SendMessage), which its event source mapping consumes; backpressure.py
    re-sends a deferred claim to it (get_queue_url, send_message)."""
    return {
        (GET_SECRET, SECRET.format("sftp"), ""),
        ("sqs:getqueueurl", "${SftpClaimsQueue.Arn}", ""),
        ("sqs:sendmessage", "${SftpClaimsQueue.Arn}", ""),
    } | {(action, "${SftpClaimsQueue.Arn}", "") for action in SQS_CONSUME}


def _reconciler(storage_secrets: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """reconcile.py: list_objects_v2 on each results prefix (ListBucket, which also turns a
    missing record into 404), get/put_object on records, its cursor and relayed outputs, the
    multipart calls and abort_multipart_upload of a relay, delete_object for "move" of a
    failed or lost job's source; the other clouds' secrets for their jobs. No queue."""
    return {
        ("s3:getobject", OBJECTS, ""),
        ("s3:putobject", OBJECTS, ""),
        ("s3:abortmultipartupload", OBJECTS, ""),
        ("s3:listbucket", BUCKET, ""),
        ("s3:deleteobject", WATCHED, ""),
    } | {(GET_SECRET, SECRET.format(name), "") for name in storage_secrets}


#: storage/azure_identity.py: the web-identity token Entra takes as the client assertion, for
#: Entra's audience and at most five minutes, by every function that touches Azure storage
FEDERATE_TO_AZURE = ("sts:getwebidentitytoken", "*", json.dumps({
    "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": "api://AzureADTokenExchange"},
    "NumericLessThanEquals": {"sts:DurationSeconds": "300"}}, sort_keys=True))

EXPECTED_ALL_ON = {
    "S3TriggerFunction": _core(ALL_ON_PREFIX, kms=True) | _s3_trigger(),
    "WebhookFunction": _core(ALL_ON_PREFIX, kms=True)
    | _webhook(("azure-account", "gcs-service-account", "sftp")) | {FEDERATE_TO_AZURE},
    # The other triggers touch no AWS storage: their grants are made from these secrets (and,
    # for Azure, the federated token).
    "AzureTriggerFunction": _core(ALL_ON_PREFIX, kms=True)
    | {(GET_SECRET, SECRET.format("event-grid"), ""),
       (GET_SECRET, SECRET.format("azure-account"), ""), FEDERATE_TO_AZURE},
    "GcsTriggerFunction": _core(ALL_ON_PREFIX, kms=True)
    | {(GET_SECRET, SECRET.format("gcs-service-account"), "")},
    "SftpSweepFunction": _core(ALL_ON_PREFIX, kms=True) | _sftp_sweep(),
    "ReconcilerFunction": _core(ALL_ON_PREFIX, kms=True)
    | _reconciler(("azure-account", "gcs-service-account", "sftp")) | {FEDERATE_TO_AZURE},
}


def _role_of(template: dict[str, Any], function_id: str) -> str:
    role = template["Resources"][function_id]["Properties"]["Role"]
    assert role["Fn::GetAtt"][1] == "Arn"
    return str(role["Fn::GetAtt"][0])


@pytest.mark.parametrize("function_id", sorted(EXPECTED_ALL_ON))
def test_each_role_holds_exactly_what_its_code_calls(
    deployed_all: dict[str, Any], params_all: dict[str, str], function_id: str
) -> None:
    role = _role_of(deployed_all, function_id)
    assert role == FUNCTIONS[function_id]
    assert permissions(deployed_all, role, params_all) == EXPECTED_ALL_ON[function_id]


def test_defaults_deploy_only_the_s3_parts(deployed: dict[str, Any]) -> None:
    params = parameter_values(deployed, DEFAULTS)
    functions = _resources(deployed, "AWS::Lambda::Function")
    assert set(functions) == {"S3TriggerFunction", "WebhookFunction", "ReconcilerFunction"}
    core = _core(DEFAULT_PREFIX, kms=False)
    assert permissions(deployed, "S3TriggerRole", params) == core | _s3_trigger()
    assert permissions(deployed, "WebhookFunctionRole", params) == core | _webhook(())
    assert permissions(deployed, "ReconcilerRole", params) == core | _reconciler(())


def _glob(pattern: str) -> re.Pattern[str]:
    """An IAM resource pattern (``*`` any run of characters, ``?`` one) as a regex."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern) + "$")


@pytest.mark.parametrize("values", [DEFAULTS, ALL_ON], ids=["defaults", "all-on"])
def test_provider_grant_reaches_the_provider_secrets_only(values: dict[str, Any]) -> None:
    # The one wildcard secret grant: the prefix's secrets in this account and region, and none
    # of the other secrets the stack is given (the context key, the storages' credentials).
    template = _deployed(values)
    params = parameter_values(template, values)
    pseudo = {"${AWS::Partition}": "aws", "${AWS::Region}": "us-east-1",
              "${AWS::AccountId}": "123456789012"}
    patterns = set()
    for role in FUNCTIONS.values():
        if role not in template["Resources"]:
            continue
        for action, resource, _ in permissions(template, role, params):
            if action == GET_SECRET and "*" in resource:
                for name, value in pseudo.items():
                    resource = resource.replace(name, value)
                patterns.add(resource)
    (pattern,) = patterns
    prefix = params["ProviderSecretsPrefix"]
    grant = _glob(pattern)
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}-AbCdEf"
    for provider in ("cloudconvert", "freeconvert", "onlineconvert", "cloudconvert_v1"):
        assert grant.match(secret.format(prefix + provider)), provider
    for elsewhere in (secret.format(prefix.rstrip("/")), secret.format(prefix + "x")
                      .replace("123456789012", "210987654321"),
                      secret.format(prefix + "x").replace("us-east-1", "eu-west-1")):
        assert not grant.match(elsewhere), elsewhere
    others = [v for k, v in values.items() if k.endswith("SecretArn") and v]
    assert others and not [arn for arn in others if grant.match(str(arn))]


@pytest.mark.parametrize("prefix", ["convbridge/*", "convbridge", "convbridge-", "/", "a//b/"])
def test_provider_secrets_prefix_must_be_whole_segments_without_wildcards(
    tmp_path: Path, prefix: str,
) -> None:
    # The prefix becomes <prefix>* in an IAM grant: a wildcard, or a prefix that does not end
    # a path segment (convbridge- would reach convbridge-anything), would widen it.
    variant = _variant(tmp_path, f"Default: {DEFAULT_PREFIX}", f'Default: "{prefix}"')
    problems = check_template(variant)
    assert any("ProviderSecretsPrefix" in problem for problem in problems), problems


def test_rules_read_grants_are_exactly_the_configured_location() -> None:
    for location, expected in [
        ("ssm:/convbridge/rules",
         ("ssm:getparameter",
          "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/convbridge/rules")),
        ("s3://config-bucket/convbridge/rules.yaml",
         ("s3:getobject", "arn:${AWS::Partition}:s3:::config-bucket/convbridge/rules.yaml")),
    ]:
        values = {**ALL_ON, "RulesLocation": location}
        template = _deployed(values)
        params = parameter_values(template, values)
        for function_id, role in FUNCTIONS.items():
            extra = permissions(template, role, params) - EXPECTED_ALL_ON[function_id]
            assert extra == {(*expected, "")}, (location, function_id)


def _every_arm_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return _all_statements(template)


def _audience_bound(statement: dict[str, Any]) -> bool:
    """A web-identity token grant that only Entra's token exchange can use."""
    audience = (statement.get("Condition") or {}).get("ForAllValues:StringEquals", {})
    return bool(audience.get("sts:IdentityTokenAudience"))


@pytest.mark.parametrize("which", ["translated", "deployed_all"])
def test_no_wildcard_resource_for_sensitive_actions(
    request: pytest.FixtureRequest, which: str
) -> None:
    template = request.getfixturevalue(which)
    offenders = []
    for logical_id, statement in _every_arm_statements(template):
        actions = _actions(statement)
        if statement.get("Effect") == "Deny":
            continue  # a deny (the bucket's TLS-only policy) may be as wide as it likes
        if any("*" in action for action in actions if action.startswith(SENSITIVE_SERVICES)):
            offenders.append((logical_id, "wildcard action", statement))
        sensitive = any(a == "*" or a.startswith(SENSITIVE_SERVICES) for a in actions)
        if not sensitive:
            continue
        resources = [str(r) for r in _as_list(statement.get("Resource", []))]
        if actions == ["sts:getwebidentitytoken"] and _audience_bound(statement):
            continue  # the action has no resource type: "*" is its only form; the audience binds it
        # A bare "*" or a resource that is all wildcard after the service part.
        if "NotResource" in statement or any(r == "*" or r.endswith(":*") for r in resources):
            offenders.append((logical_id, "wildcard resource", statement))
    assert offenders == []


def test_only_the_logs_managed_policy_and_the_core_policy_are_attached(
    deployed_all: dict[str, Any],
) -> None:
    # An AWS managed policy is a statement this test cannot see; only the logs one is allowed.
    # (An SQS event on a SAM-generated role would attach AWSLambdaSQSQueueExecutionRole, which
    # allows every queue: hence explicit roles for every function.)
    roles = _resources(deployed_all, "AWS::IAM::Role")
    assert set(roles) == set(FUNCTIONS.values()) | {"GrantRole"}
    for logical_id, role in roles.items():
        arns = role["Properties"].get("ManagedPolicyArns", [])
        if logical_id == "GrantRole":
            assert arns == []
            continue
        assert arns == [
            {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                        "AWSLambdaBasicExecutionRole"},
            {"Ref": "BridgeCorePolicy"},
        ]
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                          "Action": "sts:AssumeRole"}]
    # The core policy is attached by the roles, never by name to others.
    assert "Roles" not in deployed_all["Resources"]["BridgeCorePolicy"]["Properties"]


def test_grant_role_trusts_only_the_trigger_role(deployed_all: dict[str, Any]) -> None:
    grant = deployed_all["Resources"]["GrantRole"]["Properties"]
    statements = grant["AssumeRolePolicyDocument"]["Statement"]
    assert statements == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::GetAtt": ["S3TriggerRole", "Arn"]}},
            "Action": "sts:AssumeRole",
        }
    ]
    assert grant["MaxSessionDuration"] == 3600


def test_grant_role_cannot_list_or_delete(
    deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    # The ceiling of everything a provider is handed: objects only, never the bucket.
    assert permissions(deployed_all, "GrantRole", params_all) == {
        ("s3:getobject", OBJECTS, ""), ("s3:putobject", OBJECTS, ""),
    }


def test_only_the_s3_trigger_may_assume_the_grant_role(translated: dict[str, Any]) -> None:
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
    # The function waits for the attachment, or its first invocations could race it.
    assert "S3TriggerAssumeGrantRolePolicy" in _as_list(
        translated["Resources"]["S3TriggerFunction"]["DependsOn"])


def test_deletes_only_under_the_watched_prefix(
    deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    # s3:DeleteObject only (a delete marker on this versioned bucket); no DeleteObjectVersion.
    # The one exception is the S3 trigger's retry (GrantRole trusts its role alone): it
    # removes the failure reports it resubmitted and puts moved sources back, wherever the
    # rules file put failures; still only delete markers.
    retry = {("S3TriggerFunction", "s3:deleteobject", OBJECTS)}
    for function_id, role in FUNCTIONS.items():
        for action, resource, _ in permissions(deployed_all, role, params_all):
            if action.startswith("s3:delete") and (function_id, action, resource) not in retry:
                assert (action, resource) == ("s3:deleteobject", WATCHED), function_id


# Every AWS call the package makes -> the IAM actions it needs. A call missing here fails
# test_every_aws_call_is_granted: add it here and to the role of the function that makes it.
CALL_ACTIONS = {
    ("s3", "get_object"): {"s3:getobject"},
    ("s3", "generate_presigned_url"): {"s3:getobject"},
    # 404 for a missing key needs ListBucket; 403 otherwise.
    ("s3", "head_object"): {"s3:getobject", "s3:listbucket"},
    ("s3", "put_object"): {"s3:putobject"},
    ("s3", "create_multipart_upload"): {"s3:putobject"},
    ("s3", "upload_part"): {"s3:putobject"},
    ("s3", "complete_multipart_upload"): {"s3:putobject"},
    ("s3", "abort_multipart_upload"): {"s3:abortmultipartupload"},
    ("s3", "copy_object"): {"s3:getobject", "s3:putobject"},
    ("s3", "delete_object"): {"s3:deleteobject"},
    # list_objects_v2: `convbridge retry` (the CLI, run with the operator's credentials).
    ("s3", "get_paginator"): {"s3:listbucket"},
    ("sts", "assume_role"): {"sts:assumerole"},
    # Azure user delegation: the web-identity token Entra takes as the client assertion
    ("sts", "get_web_identity_token"): {"sts:getwebidentitytoken"},
    ("secretsmanager", "get_secret_value"): {"secretsmanager:getsecretvalue"},
    ("ssm", "get_parameter"): {"ssm:getparameter"},
    ("sqs", "send_message"): {"sqs:sendmessage"},
    # backpressure.py: the deferring trigger's own queue URL, from its ARN
    ("sqs", "get_queue_url"): {"sqs:getqueueurl"},
    ("dynamodb", "get_item"): {"dynamodb:getitem"},
    ("dynamodb", "put_item"): {"dynamodb:putitem"},
    ("dynamodb", "update_item"): {"dynamodb:updateitem"},
    ("dynamodb", "delete_item"): {"dynamodb:deleteitem"},
}
# What the event source mappings call with the function's role (not in the package).
EVENT_SOURCE_ACTIONS = set(SQS_CONSUME)

_CALL_PATTERNS = [
    (re.compile(r"self\._s3\.(\w+)\("), "s3"),
    (re.compile(r"self\._sts\.(\w+)\("), "sts"),
    (re.compile(r"\.sqs\(\)\.(\w+)\("), "sqs"),
    (re.compile(r"(?<![\w.])sqs\.(\w+)\("), "sqs"),
    (re.compile(r"""client\(["'](\w+)["']\)\.(\w+)\("""), None),
]


def _aws_calls() -> set[tuple[str, str]]:
    """(service, method) for every boto3 call in shared/convbridge, and the DynamoDB calls of
    the Powertools persistence layer the claims use."""
    calls: set[tuple[str, str]] = set()
    for path in (ROOT / "shared" / "convbridge").rglob("*.py"):
        text = path.read_text()
        for pattern, service in _CALL_PATTERNS:
            for match in pattern.finditer(text):
                if service is None:
                    calls.add((match.group(1), match.group(2)))
                else:
                    calls.add((service, match.group(1)))
        if path.name == "secrets.py":
            calls |= {("secretsmanager", m) for m in re.findall(r"_client\.(\w+)\(", text)}
    from aws_lambda_powertools.utilities.idempotency.persistence import dynamodb

    source = Path(dynamodb.__file__).read_text()
    calls |= {("dynamodb", m) for m in re.findall(r"self\.client\.(\w+)\(", source)}
    return calls


def test_every_aws_call_is_granted(
    deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    calls = _aws_calls()
    assert ("sts", "assume_role") in calls and ("dynamodb", "put_item") in calls
    unknown = {call for call in calls if call not in CALL_ACTIONS}
    assert unknown == set(), "add these to CALL_ACTIONS and to the roles that need them"
    granted = {
        action
        for role in FUNCTIONS.values()
        for action, _, _ in permissions(deployed_all, role, params_all)
    }
    needed = set().union(*(CALL_ACTIONS[call] for call in calls))
    # ssm:GetParameter is granted only with the rules in SSM (tested above).
    assert needed - granted == {"ssm:getparameter"}
    # ...and nothing is granted that no call and no event source mapping needs.
    assert granted - needed - EVENT_SOURCE_ACTIONS == {"kms:decrypt"}  # via Secrets Manager


def test_queue_policy_lets_only_the_source_bucket_send(deployed_all: dict[str, Any]) -> None:
    policy = deployed_all["Resources"]["S3EventsQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "S3EventsQueue"}]
    (statement,) = _statements(deployed_all["Resources"]["S3EventsQueuePolicy"])
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    assert statement["Condition"] == {
        "ArnEquals": {
            "aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${SourceBucketName}"}
        },
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
    }


# --- an existing bucket ---------------------------------------------------------------------

EXISTING_ON = {**ALL_ON, **EXISTING_BUCKET}


@pytest.fixture(scope="module")
def deployed_existing() -> dict[str, Any]:
    """Every option on, watching a bucket the stack does not create."""
    return _deployed(EXISTING_ON)


def test_a_fault_in_the_existing_bucket_rule_is_reported(tmp_path: Path) -> None:
    variant = _variant(tmp_path, "Arn: !GetAtt S3EventsQueue.Arn\n",
                       "Arn: !GetAtt S3EventsQueues.Arn\n")
    problems = check_template(variant)
    assert any("SourceBucketObjectCreatedRule" in p and "S3EventsQueues" in p
               for p in problems), problems


def test_the_existing_bucket_deployment_is_clean(tmp_path: Path) -> None:
    variant = tmp_path / "template.json"
    variant.write_text(json.dumps(with_defaults(_source(), EXISTING_ON)))
    assert check_template(variant) == []


def test_existing_bucket_is_neither_created_nor_given_a_policy(
    deployed_existing: dict[str, Any],
) -> None:
    # A bucket policy would replace the owner's whole policy; the bucket stays as it is.
    assert not _resources(deployed_existing, "AWS::S3::Bucket")
    assert not _resources(deployed_existing, "AWS::S3::BucketPolicy")
    params = parameter_values(deployed_existing, EXISTING_ON)
    assert render(deployed_existing["Outputs"]["SourceBucket"]["Value"], params) == (
        "convbridge-demo-bucket")


def test_existing_bucket_uploads_reach_the_queue_through_eventbridge(
    deployed_existing: dict[str, Any],
) -> None:
    params = parameter_values(deployed_existing, EXISTING_ON)
    rules = {k: v["Properties"] for k, v in
             _resources(deployed_existing, "AWS::Events::Rule").items()
             if "EventPattern" in v["Properties"]}
    assert set(rules) == {"SourceBucketObjectCreatedRule"}
    rule = rules["SourceBucketObjectCreatedRule"]
    assert render(rule["EventPattern"], params) == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": ["convbridge-demo-bucket"]},
                   "object": {"key": [{"prefix": "inbox/"}]}},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    # Only that rule may send, and the S3 trigger consumes the same queue as before (it parses
    # SQS-wrapped EventBridge events: tests/unit/test_events_s3.py, sqs_eventbridge.json).
    (statement,) = _statements(deployed_existing["Resources"]["S3EventsQueuePolicy"])
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["SourceBucketObjectCreatedRule", "Arn"]}}
    }
    mapping = _event_source_mappings(deployed_existing)["S3TriggerFunction"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}


@pytest.mark.parametrize("function_id", sorted(EXPECTED_ALL_ON))
def test_roles_on_an_existing_bucket_hold_exactly_the_same_grants(
    deployed_existing: dict[str, Any], function_id: str
) -> None:
    # The grants name the bucket by parameter, so they reach that bucket and nothing more.
    params = parameter_values(deployed_existing, EXISTING_ON)
    role = _role_of(deployed_existing, function_id)
    assert permissions(deployed_existing, role, params) == EXPECTED_ALL_ON[function_id]
    assert permissions(deployed_existing, "GrantRole", params) == {
        ("s3:getobject", OBJECTS, ""), ("s3:putobject", OBJECTS, "")}


# --- wiring the code depends on --------------------------------------------------------------


def _environment(template: dict[str, Any], logical_id: str,
                 params: dict[str, str]) -> dict[str, Any]:
    function = template["Resources"][logical_id]
    assert function["Type"] == "AWS::Lambda::Function"
    variables = function["Properties"]["Environment"]["Variables"]
    rendered: dict[str, Any] = render(variables, params)
    return rendered


COMMON_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": "convbridge",
    "POWERTOOLS_METRICS_NAMESPACE": "convbridge",
    "LOG_LEVEL": "INFO",
    "CONVBRIDGE_RULES": "/opt/rules.yaml",
    "CONVBRIDGE_CONTEXT_SECRET": SECRET.format("context"),
    "CONVBRIDGE_PROVIDER_SECRETS_PREFIX": DEFAULT_PREFIX,
    "CONVBRIDGE_READ_GRANT_SECONDS": "900",
    "CONVBRIDGE_WRITE_GRANT_SECONDS": "3600",
    "CONVBRIDGE_IDEMPOTENCY_TABLE": "${IdempotencyTable}",
}
WEBHOOK_URL = "${WebhookFunctionUrl.FunctionUrl}"
#: The sandbox's base URL, as CloudConvert's API v2 documentation gives it (plus /v2).
CLOUDCONVERT_SANDBOX = "https://api.sandbox.cloudconvert.com/v2"


def test_environment_with_every_option_on(
    deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    common = COMMON_ENVIRONMENT | {"CONVBRIDGE_PROVIDER_SECRETS_PREFIX": ALL_ON_PREFIX,
                                   "CONVBRIDGE_CLOUDCONVERT_URL": CLOUDCONVERT_SANDBOX}
    azure = {
        "CONVBRIDGE_AZURE_ACCOUNT_SECRET": SECRET.format("azure-account"),
        "CONVBRIDGE_AZURE_BLOB_ENDPOINT": "https://convbridgedemo.blob.core.windows.net",
    }
    gcs = {"CONVBRIDGE_GCS_SERVICE_ACCOUNT_SECRET": SECRET.format("gcs-service-account")}
    sftp = {
        "CONVBRIDGE_SFTP_SECRET": SECRET.format("sftp"),
        "CONVBRIDGE_SFTP_HOST_KEY": EVERY_OPTION_ON["SftpHostKey"],
    }
    expected: dict[str, dict[str, Any]] = {
        "S3TriggerFunction": {"CONVBRIDGE_WEBHOOK_URL": WEBHOOK_URL,
                              "CONVBRIDGE_GRANT_ROLE_ARN": "${GrantRole.Arn}",
                              "CONVBRIDGE_TRIGGER_CONCURRENCY":
                                  f"{params_all['S3EventsMaxConcurrency']}+"
                                  f"{params_all['SftpClaimsMaxConcurrency']}"},
        "WebhookFunction": {"CONVBRIDGE_COMPLETION_QUEUE_URL": "${CompletionQueue}"}
        | azure | gcs | sftp,
        "AzureTriggerFunction": {"CONVBRIDGE_WEBHOOK_URL": WEBHOOK_URL,
                                 "CONVBRIDGE_EVENT_GRID_SECRET": SECRET.format("event-grid")}
        | azure,
        "GcsTriggerFunction": {"CONVBRIDGE_WEBHOOK_URL": WEBHOOK_URL,
                               "CONVBRIDGE_PUBSUB_AUDIENCE": "convbridge-demo",
                               "CONVBRIDGE_PUBSUB_SERVICE_ACCOUNT":
                                   EVERY_OPTION_ON["PubSubServiceAccount"]} | gcs,
        "SftpSweepFunction": {"CONVBRIDGE_WEBHOOK_URL": WEBHOOK_URL,
                              "CONVBRIDGE_SFTP_CLAIMS_QUEUE_URL": "${SftpClaimsQueue}",
                              "CONVBRIDGE_TRIGGER_CONCURRENCY":
                                  f"{params_all['S3EventsMaxConcurrency']}+"
                                  f"{params_all['SftpClaimsMaxConcurrency']}"} | sftp,
        "ReconcilerFunction": azure | gcs | sftp,
    }
    for function_id, extra in expected.items():
        assert _environment(deployed_all, function_id, params_all) == common | extra, function_id


def test_environment_by_default_names_no_unset_secret(deployed: dict[str, Any]) -> None:
    params = parameter_values(deployed, DEFAULTS)
    assert _environment(deployed, "S3TriggerFunction", params) == COMMON_ENVIRONMENT | {
        "CONVBRIDGE_WEBHOOK_URL": WEBHOOK_URL, "CONVBRIDGE_GRANT_ROLE_ARN": "${GrantRole.Arn}",
        "CONVBRIDGE_TRIGGER_CONCURRENCY": "5",
    }
    assert _environment(deployed, "WebhookFunction", params) == COMMON_ENVIRONMENT | {
        "CONVBRIDGE_COMPLETION_QUEUE_URL": "${CompletionQueue}",
    }
    assert _environment(deployed, "ReconcilerFunction", params) == COMMON_ENVIRONMENT


@pytest.mark.parametrize(("sandbox", "expected"), [("true", CLOUDCONVERT_SANDBOX),
                                                    ("false", None)])
def test_cloudconvert_sandbox_switches_every_function_to_the_sandbox_api(
    sandbox: str, expected: str | None,
) -> None:
    # Unset, the adapter's live default (https://api.cloudconvert.com/v2) applies.
    values = {**ALL_ON, "CloudConvertSandbox": sandbox}
    template = _deployed(values)
    params = parameter_values(template, values)
    for function_id in FUNCTIONS:
        env = _environment(template, function_id, params)
        assert env.get("CONVBRIDGE_CLOUDCONVERT_URL") == expected, function_id


def test_the_sandbox_url_is_the_one_the_settings_read() -> None:
    settings = Settings.from_env({
        "CONVBRIDGE_RULES": "/opt/rules.yaml", "CONVBRIDGE_CONTEXT_SECRET": "context",
        "CONVBRIDGE_IDEMPOTENCY_TABLE": "claims",
        "CONVBRIDGE_CLOUDCONVERT_URL": CLOUDCONVERT_SANDBOX})
    assert settings.base_url("cloudconvert") == CLOUDCONVERT_SANDBOX


def test_azure_endpoint_is_only_set_when_given() -> None:
    # Empty: the adapter uses https://<account>.blob.core.windows.net itself.
    values = {**ALL_ON, "AzureBlobEndpoint": ""}
    template = _deployed(values)
    params = parameter_values(template, values)
    for function_id in ("AzureTriggerFunction", "WebhookFunction"):
        env = _environment(template, function_id, params)
        assert "CONVBRIDGE_AZURE_BLOB_ENDPOINT" not in env
        assert env["CONVBRIDGE_AZURE_ACCOUNT_SECRET"] == SECRET.format("azure-account")


def test_pubsub_audience_defaults_to_a_per_stack_value() -> None:
    values = {**ALL_ON, "PubSubAudience": ""}
    template = _deployed(values)
    params = parameter_values(template, values)
    audience = "convbridge-${AWS::StackName}-${AWS::AccountId}"
    env = _environment(template, "GcsTriggerFunction", params)
    assert env["CONVBRIDGE_PUBSUB_AUDIENCE"] == audience
    assert render(template["Outputs"]["PubSubAudience"]["Value"], params) == audience


def test_functions_run_on_arm64_with_one_layer_each(deployed_all: dict[str, Any]) -> None:
    functions = _resources(deployed_all, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTIONS)
    layers = _resources(deployed_all, "AWS::Lambda::LayerVersion")
    assert {k.rstrip("0123456789abcdef") for k in layers} == {"SharedLayer", "StorageSdkLayer"}
    for layer in layers.values():
        assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    for function_id, function in functions.items():
        properties = function["Properties"]
        assert properties["Architectures"] == ["arm64"]
        assert properties["Runtime"] == {"Ref": "PythonRuntime"}
        assert properties["Handler"] == "app.handler"
        (layer,) = properties["Layers"]
        # The S3 trigger never unpacks the other clouds' SDKs; everyone else needs them here.
        wanted = "SharedLayer" if function_id == "S3TriggerFunction" else "StorageSdkLayer"
        assert layer["Ref"].startswith(wanted), function_id


def test_webhook_uses_the_lean_layer_when_only_s3_is_deployed(deployed: dict[str, Any]) -> None:
    (layer,) = deployed["Resources"]["WebhookFunction"]["Properties"]["Layers"]
    assert layer["Ref"].startswith("SharedLayer")
    assert not [k for k in deployed["Resources"] if k.startswith("StorageSdkLayer")]


def test_layer_dependencies_match_pyproject() -> None:
    makefile = (ROOT / "shared" / "Makefile").read_text()

    def listed(variable: str) -> set[str]:
        match = re.search(rf"^{variable} \?= (.*?)(?<!\\)$", makefile, re.M | re.S)
        assert match, variable
        return set(re.findall(r'"([^"]+)"', match.group(1)))

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {d for d in project["dependencies"] if not d.startswith("boto3")}
    extras = project["optional-dependencies"]
    storage = {d for name in ("azure", "gcs", "sftp") for d in extras[name]}
    assert listed("RUNTIME_DEPS") == runtime
    assert listed("STORAGE_DEPS") == storage


def test_function_urls_are_public_and_output(
    deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    urls = _resources(deployed_all, "AWS::Lambda::Url")
    assert set(urls) == {"WebhookFunctionUrl", "AzureTriggerFunctionUrl", "GcsTriggerFunctionUrl"}
    for url in urls.values():
        # Providers, Event Grid and Pub/Sub cannot sign with SigV4: each is authenticated in
        # code (HMAC or token, shared secret, OIDC).
        assert url["Properties"]["AuthType"] == "NONE"
    outputs = {name: render(o["Value"], params_all) for name, o in deployed_all["Outputs"].items()}
    assert outputs == {
        "WebhookUrl": WEBHOOK_URL,
        "AzureEventGridEndpoint": "${AzureTriggerFunctionUrl.FunctionUrl}",
        "GcsPushEndpoint": "${GcsTriggerFunctionUrl.FunctionUrl}",
        "PubSubAudience": "convbridge-demo",
        "AzureFederatedRoleArns":
            "${AzureTriggerRole.Arn},${WebhookFunctionRole.Arn},${ReconcilerRole.Arn}",
        "GcsFederatedRoleArns":
            "${GcsTriggerRole.Arn},${WebhookFunctionRole.Arn},${ReconcilerRole.Arn}",
        "SftpSweepFunctionName": "${SftpSweepFunction}",
        "SftpClaimsQueueUrl": "${SftpClaimsQueue}",
        "SftpClaimsDeadLetterQueueUrl": "${SftpClaimsDeadLetterQueue}",
        "S3TriggerFunctionName": "${S3TriggerFunction}",
        "ReconcilerFunctionName": "${ReconcilerFunction}",
        "SourceBucket": "${SourceBucket}",
        "GrantRoleArn": "${GrantRole.Arn}",
        "IdempotencyTableName": "${IdempotencyTable}",
        "S3EventsQueueUrl": "${S3EventsQueue}",
        "S3EventsDeadLetterQueueUrl": "${S3EventsDeadLetterQueue}",
        "CompletionQueueUrl": "${CompletionQueue}",
        "CompletionDeadLetterQueueUrl": "${CompletionDeadLetterQueue}",
        "DashboardUrl": "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home"
                        "?region=${AWS::Region}#dashboards:name=${Dashboard}",
    }


_AZURE_OFF = {"AzureAccountSecretArn": "", "EventGridSecretArn": "", "AzureBlobEndpoint": ""}
_GCS_OFF = {"GcsServiceAccountSecretArn": "", "PubSubServiceAccount": "", "PubSubAudience": ""}


@pytest.mark.parametrize(
    ("off", "expected"),
    [
        ({}, {"AzureFederatedRoleArns": "AzureTriggerRole",
              "GcsFederatedRoleArns": "GcsTriggerRole"}),
        (_GCS_OFF, {"AzureFederatedRoleArns": "AzureTriggerRole"}),
        (_AZURE_OFF, {"GcsFederatedRoleArns": "GcsTriggerRole"}),
        ({**_AZURE_OFF, **_GCS_OFF}, {}),
    ],
    ids=["both", "azure-only", "gcs-only", "neither"],
)
def test_federated_role_arns_are_output_for_each_storage_that_federates(
    off: dict[str, str], expected: dict[str, str],
) -> None:
    values = {**ALL_ON, **off}
    template = _deployed(values)
    params = parameter_values(template, values)
    outputs = {name: render(output["Value"], params)
               for name, output in template["Outputs"].items() if "Federated" in name}
    # Whatever role touches the storage signs in to it: its trigger, and the webhook and the
    # reconciler that write its jobs back; each of them must be a subject on the other side.
    assert outputs == {
        name: ",".join(f"${{{role}.Arn}}" for role in
                       (trigger, "WebhookFunctionRole", "ReconcilerRole"))
        for name, trigger in expected.items()
    }
    for name in outputs:
        for role in outputs[name].split(","):
            assert role.removeprefix("${").removesuffix(".Arn}") in template["Resources"]
    if "AzureFederatedRoleArns" in outputs:
        description = template["Outputs"]["AzureFederatedRoleArns"]["Description"]
        assert "get-outbound-web-identity-federation-info" in description


def test_default_outputs_are_the_s3_ones(deployed: dict[str, Any]) -> None:
    assert set(deployed["Outputs"]) == {
        "WebhookUrl", "SourceBucket", "GrantRoleArn", "IdempotencyTableName",
        "S3EventsQueueUrl", "S3EventsDeadLetterQueueUrl", "CompletionQueueUrl",
        "CompletionDeadLetterQueueUrl", "DashboardUrl", "ReconcilerFunctionName",
        "S3TriggerFunctionName",
    }


def _scheduled(template: dict[str, Any]) -> dict[str, Any]:
    """function id -> its schedule expression, for every EventBridge schedule rule."""
    found = {}
    for rule in _resources(template, "AWS::Events::Rule").values():
        (target,) = rule["Properties"]["Targets"]
        function_id, attribute = target["Arn"]["Fn::GetAtt"]
        assert attribute == "Arn"
        found[function_id] = rule["Properties"]["ScheduleExpression"]
    return found


def _no_async_retries(template: dict[str, Any]) -> set[str]:
    return {config["Properties"]["FunctionName"]["Ref"]
            for config in _resources(template, "AWS::Lambda::EventInvokeConfig").values()
            if config["Properties"]["MaximumRetryAttempts"] == 0}


def test_sftp_sweep_runs_on_its_schedule_without_async_retries(
    deployed_all: dict[str, Any],
) -> None:
    assert _scheduled(deployed_all)["SftpSweepFunction"] == {"Ref": "SftpSweepSchedule"}
    assert "SftpSweepFunction" in _no_async_retries(deployed_all)
    assert deployed_all["Resources"]["SftpSweepFunction"]["Properties"]["Timeout"] == 300


def test_the_reconciler_runs_on_its_schedule_in_every_deployment(
    deployed: dict[str, Any], deployed_all: dict[str, Any],
) -> None:
    assert _scheduled(deployed) == {"ReconcilerFunction": {"Ref": "ReconcileSchedule"}}
    assert set(_scheduled(deployed_all)) == {"ReconcilerFunction", "SftpSweepFunction"}
    assert _no_async_retries(deployed) == {"ReconcilerFunction"}
    assert deployed["Resources"]["ReconcilerFunction"]["Properties"]["Timeout"] == 900
    assert _source()["Parameters"]["ReconcileSchedule"]["Default"] == "rate(1 hour)"


def test_log_groups_and_reserved_concurrency(
    deployed: dict[str, Any], deployed_all: dict[str, Any], params_all: dict[str, str]
) -> None:
    for function_id in FUNCTIONS:
        properties = deployed_all["Resources"][function_id]["Properties"]
        group = properties["LoggingConfig"]["LogGroup"]["Ref"]
        log_group = deployed_all["Resources"][group]["Properties"]
        assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert render(log_group["LogGroupName"], params_all).startswith(
            "/aws/lambda/${AWS::StackName}/")
        # The SQS consumers are capped on their event source (below), never by reservation.
        reserved = "ReservedConcurrentExecutions" in properties
        assert reserved == (function_id not in SQS_CONSUMERS
                            or function_id in RESERVABLE_CONSUMERS), function_id
    # -1 (the default) leaves every function unreserved.
    for function in _resources(deployed, "AWS::Lambda::Function").values():
        assert "ReservedConcurrentExecutions" not in function["Properties"]
    assert _source()["Parameters"]["LogRetentionDays"]["Default"] == 30


def test_bucket_notifies_the_queue_only_for_the_watched_prefix(
    deployed: dict[str, Any],
) -> None:
    resource = deployed["Resources"]["SourceBucket"]
    # S3 tests the destination when the notification is set: the queue policy must be there.
    assert resource["DependsOn"] == "S3EventsQueuePolicy"
    assert resource["DeletionPolicy"] == "Retain"
    bucket = resource["Properties"]
    assert set(bucket["NotificationConfiguration"]) == {"QueueConfigurations"}
    (notification,) = bucket["NotificationConfiguration"]["QueueConfigurations"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Queue"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    assert notification["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": {"Ref": "WatchedPrefix"}}
    ]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def _event_source_mappings(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function logical id -> its one event source mapping's properties."""
    found: dict[str, dict[str, Any]] = {}
    for mapping in _resources(template, "AWS::Lambda::EventSourceMapping").values():
        properties = mapping["Properties"]
        function = properties["FunctionName"]["Ref"]
        assert function not in found, f"{function} has several event sources"
        found[function] = properties
    return found


def test_functions_consume_their_queues_with_partial_batch_failures(
    deployed_all: dict[str, Any],
) -> None:
    mappings = _event_source_mappings(deployed_all)
    assert set(mappings) == {"S3TriggerFunction", "WebhookFunction", "SftpSweepFunction"}
    trigger, webhook = mappings["S3TriggerFunction"], mappings["WebhookFunction"]
    claims = mappings["SftpSweepFunction"]
    assert claims["EventSourceArn"] == {"Fn::GetAtt": ["SftpClaimsQueue", "Arn"]}
    assert claims["BatchSize"] == 10
    assert 0 < claims["MaximumBatchingWindowInSeconds"] <= 5
    assert trigger["EventSourceArn"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    assert trigger["BatchSize"] == 10
    assert 0 < trigger["MaximumBatchingWindowInSeconds"] <= 5
    assert webhook["EventSourceArn"] == {"Fn::GetAtt": ["CompletionQueue", "Arn"]}
    assert webhook["BatchSize"] == 5
    for mapping in (trigger, webhook, claims):
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


SQS_CONSUMERS = {"S3TriggerFunction": "S3EventsMaxConcurrency",
                 "WebhookFunction": "CompletionMaxConcurrency",
                 "SftpSweepFunction": "SftpClaimsMaxConcurrency"}
#: consumers that also run on a schedule and keep a reservation parameter of their own; set,
#: it must exceed the event source's cap (one more for the scheduled run), so the poller is
#: never throttled
RESERVABLE_CONSUMERS = {"SftpSweepFunction": "SftpSweepConcurrency"}


@pytest.mark.parametrize("which", ["deployed", "deployed_all"])
def test_queue_consumers_are_capped_by_maximum_concurrency_not_reservation(
    request: pytest.FixtureRequest, which: str,
) -> None:
    # Reserved concurrency throttles the SQS poller's invocations; throttled receives count
    # toward maxReceiveCount and push messages that never ran into the dead-letter queue.
    template = request.getfixturevalue(which)
    values = ALL_ON if which == "deployed_all" else DEFAULTS
    params = parameter_values(template, values)
    mappings = _event_source_mappings(template)
    for function_id, parameter in SQS_CONSUMERS.items():
        if function_id not in template["Resources"]:
            continue  # an optional storage that is off
        reserved = template["Resources"][function_id]["Properties"].get(
            "ReservedConcurrentExecutions")
        if function_id in RESERVABLE_CONSUMERS and reserved is not None:
            assert int(render(reserved, params)) > int(params[parameter]) + 1, function_id
        else:
            assert reserved is None, function_id
        scaling = render(mappings[function_id]["ScalingConfig"], params)
        assert scaling == {"MaximumConcurrency": params[parameter]}, function_id
        assert 2 <= int(params[parameter]) <= 1000
    if which == "deployed":
        # CloudConvert's default account budget is 5 concurrent jobs: one per environment
        assert (params["S3EventsMaxConcurrency"], params["CompletionMaxConcurrency"]) == (
            "5", "5")


JOB_CREATING_CONSUMERS = ("S3TriggerFunction", "SftpSweepFunction")


@pytest.mark.parametrize("which", ["deployed", "deployed_all"])
@pytest.mark.parametrize("changed", [{}, {"S3EventsMaxConcurrency": 7},
                                     {"SftpClaimsMaxConcurrency": 9}])
def test_job_creating_consumers_split_provider_limits_by_their_maximum_concurrency(
    request: pytest.FixtureRequest, which: str, changed: dict[str, int],
) -> None:
    # Every environment that creates jobs takes 1/N of a provider account's limits, N being
    # as many as the job-creating event sources may run at once together: with N any smaller,
    # the shares would sum over the account.
    template = request.getfixturevalue(which)
    params = parameter_values(template, {**(ALL_ON if which == "deployed_all" else DEFAULTS),
                                         **changed})
    mappings = _event_source_mappings(template)
    running = sum(int(render(mappings[name]["ScalingConfig"], params)["MaximumConcurrency"])
                  for name in JOB_CREATING_CONSUMERS if name in mappings)
    consumers = [name for name in JOB_CREATING_CONSUMERS if name in mappings]
    assert consumers == (list(JOB_CREATING_CONSUMERS) if which == "deployed_all"
                         else ["S3TriggerFunction"])
    for name in consumers:
        function = template["Resources"][name]["Properties"]
        shares = render(function["Environment"]["Variables"], params)[
            "CONVBRIDGE_TRIGGER_CONCURRENCY"]
        assert environment_count(shares) == running, (name, shares)


@pytest.mark.parametrize("parameter", sorted(SQS_CONSUMERS.values()))
@pytest.mark.parametrize("value", [1, 1001])
def test_maximum_concurrency_outside_the_aws_range_is_refused(
    tmp_path: Path, parameter: str, value: int,
) -> None:
    template = with_defaults(_source(), {parameter: value})
    variant = tmp_path / "template.json"
    variant.write_text(json.dumps(template))
    problems = check_template(variant)
    assert any(parameter in problem for problem in problems), problems


def test_s3_never_invokes_a_function_directly(deployed_all: dict[str, Any]) -> None:
    permissions_ = _resources(deployed_all, "AWS::Lambda::Permission").values()
    principals = {p["Properties"]["Principal"] for p in permissions_}
    # Function URLs ("*", narrowed by FunctionUrlAuthType / InvokedViaFunctionUrl) and the
    # SFTP schedule; nothing else may invoke a function.
    assert principals == {"*", "events.amazonaws.com"}
    for permission in permissions_:
        properties = permission["Properties"]
        if properties["Principal"] == "*":
            assert properties.get("FunctionUrlAuthType") == "NONE" or properties.get(
                "InvokedViaFunctionUrl") is True


def test_visibility_timeouts_outlast_their_consumers(deployed_all: dict[str, Any]) -> None:
    # AWS: at least 6 x the function timeout plus the batching window, or a batch still being
    # worked on is delivered again; SQS caps it at 12 hours.
    resources = deployed_all["Resources"]
    for function, mapping in _event_source_mappings(deployed_all).items():
        timeout = resources[function]["Properties"]["Timeout"]
        queue = resources[mapping["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]
        window = mapping.get("MaximumBatchingWindowInSeconds", 0)
        assert 6 * timeout + window <= queue["VisibilityTimeout"] <= 12 * 3600, function
    assert resources["S3TriggerFunction"]["Properties"]["Timeout"] == 30
    assert resources["WebhookFunction"]["Properties"]["Timeout"] == 900


QUEUES_AND_DLQS = {
    "S3EventsQueue": "S3EventsDeadLetterQueue",
    "CompletionQueue": "CompletionDeadLetterQueue",
    "SftpClaimsQueue": "SftpClaimsDeadLetterQueue",
}


def test_queues_have_dead_letter_queues(deployed_all: dict[str, Any]) -> None:
    resources = deployed_all["Resources"]
    queues = _resources(deployed_all, "AWS::SQS::Queue")
    assert set(queues) == set(QUEUES_AND_DLQS) | set(QUEUES_AND_DLQS.values())
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
    for source, dlq in QUEUES_AND_DLQS.items():
        properties = resources[source]["Properties"]
        assert properties["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]},
            "maxReceiveCount": 5,
        }
        dlq_properties = resources[dlq]["Properties"]
        assert "RedrivePolicy" not in dlq_properties
        assert dlq_properties["MessageRetentionPeriod"] == 14 * 24 * 3600
        # A message's age counts from its first enqueue: the DLQ must keep it longer.
        assert properties["MessageRetentionPeriod"] < dlq_properties["MessageRetentionPeriod"]


def _alarm_actions_follow_the_topic(properties: dict[str, Any]) -> bool:
    return bool(properties.get("AlarmActions") == [{"Ref": "AlarmTopicArn"}])


def test_each_dead_letter_queue_has_an_alarm(deployed_all: dict[str, Any]) -> None:
    watched = set()
    for alarm in _resources(deployed_all, "AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        if "Namespace" not in properties:
            continue
        (dimension,) = properties["Dimensions"]
        assert dimension["Name"] == "QueueName"
        queue, attribute = dimension["Value"]["Fn::GetAtt"]
        assert attribute == "QueueName"
        watched.add(queue)
        assert properties["Namespace"] == "AWS/SQS"
        assert properties["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert properties["ComparisonOperator"] == "GreaterThanThreshold"
        assert properties["Threshold"] == 0
        assert properties["Period"] * properties["EvaluationPeriods"] == 300
        assert _alarm_actions_follow_the_topic(properties)
    assert watched == set(QUEUES_AND_DLQS.values())


def test_failure_rate_alarm_per_function(deployed_all: dict[str, Any]) -> None:
    alarmed = set()
    for alarm in _resources(deployed_all, "AWS::CloudWatch::Alarm").values():
        metrics = alarm["Properties"].get("Metrics", [])
        stats = {m["Id"]: m["MetricStat"] for m in metrics if "MetricStat" in m}
        if set(stats) != {"errors", "invocations"}:
            continue
        functions = {s["Metric"]["Dimensions"][0]["Value"]["Ref"] for s in stats.values()}
        (function,) = functions
        alarmed.add(function)
        assert {s["Metric"]["MetricName"] for s in stats.values()} == {"Errors", "Invocations"}
        (rate,) = [m for m in metrics if m.get("ReturnData")]
        assert rate["Expression"] == "IF(invocations > 0, 100 * errors / invocations, 0)"
        assert alarm["Properties"]["Threshold"] == {"Ref": "FailureRateAlarmPercent"}
        assert _alarm_actions_follow_the_topic(alarm["Properties"])
    assert alarmed == set(FUNCTIONS)


# The Powertools Metrics the lead's code emits and the dashboard reads (namespace convbridge,
# dimensions rule and provider).
METRIC_NAMES = {"JobsSubmitted", "JobsFinished", "JobsFailed", "RelayBytes", "CallbackLatencyMs"}


def test_jobs_failed_alarm_reads_the_emf_metric(deployed_all: dict[str, Any]) -> None:
    alarm = deployed_all["Resources"]["JobsFailedAlarm"]["Properties"]
    (query,) = alarm["Metrics"]
    assert query["Expression"] == "SELECT SUM(JobsFailed) FROM convbridge"
    assert alarm["Threshold"] == {"Ref": "JobFailureAlarmThreshold"}
    assert _alarm_actions_follow_the_topic(alarm)


def _dashboard(template: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    body = render(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"], params)
    parsed: dict[str, Any] = json.loads(body)
    return parsed


@pytest.mark.parametrize("which", ["deployed", "deployed_all"])
def test_dashboard_is_valid_json_with_every_metric(
    request: pytest.FixtureRequest, which: str
) -> None:
    template = request.getfixturevalue(which)
    dashboard = _dashboard(template, parameter_values(template, ALL_ON))
    text = json.dumps(dashboard)
    expressions = [
        metric[0]["expression"]
        for widget in dashboard["widgets"] if widget["type"] == "metric"
        for metric in widget["properties"]["metrics"] if isinstance(metric[0], dict)
    ]
    named = {name for name in METRIC_NAMES if any(f"({name})" in e for e in expressions)}
    assert named == METRIC_NAMES
    for name in ("JobsSubmitted", "JobsFinished", "JobsFailed", "RelayBytes"):
        assert f"SELECT SUM({name}) FROM convbridge GROUP BY rule, provider" in expressions
    errors = [w for w in dashboard["widgets"] if w["properties"].get("title") == "Function errors"]
    functions = {m[3] for m in errors[0]["properties"]["metrics"]}
    present = set(_resources(template, "AWS::Lambda::Function"))
    assert functions == {f"${{{name}}}" for name in present}
    assert "DeadLetterQueue.QueueName}" in text


def test_idempotency_table_matches_powertools_defaults(deployed: dict[str, Any]) -> None:
    table = deployed["Resources"]["IdempotencyTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


# --- the layer build ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("layer", ["SharedLayer", "StorageSdkLayer"])
def test_layer_build_copies_the_package_without_byte_code(tmp_path: Path, layer: str) -> None:
    artifacts = tmp_path / "layer"
    # PIP=true skips the dependency download (network); the copy step is what is checked here,
    # for a runtime other than the build Python's (which would get byte code compiled for it).
    subprocess.run(
        ["make", "-s", "-f", str(ROOT / "shared" / "Makefile"), f"build-{layer}",
         f"ARTIFACTS_DIR={artifacts}", "PIP=true", f"RULES_FILE={EXAMPLE_RULES}",
         f"PYTHON={sys.executable}", f"PYTHON_RUNTIME={_a_runtime_other_than_this_python()}"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )
    package = artifacts / "python" / "convbridge"
    assert (package / "__init__.py").is_file()
    assert not list(package.rglob("__pycache__"))
    assert not list(package.rglob("*.pyc"))


def _build_layer_from(shared: Path, tmp_path: Path,
                      *settings: str) -> subprocess.CompletedProcess[str]:
    # PIP=true: no download; the environment's own RULES_FILE, if any, must not decide the test
    environment = {k: v for k, v in os.environ.items() if k != "RULES_FILE"}
    return subprocess.run(
        ["make", "-s", "-f", str(shared / "Makefile"), "build-SharedLayer",
         f"ARTIFACTS_DIR={tmp_path / 'layer'}", "PIP=true", *settings],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def shared_without_rules(tmp_path: Path) -> Path:
    """shared/ as checked out, without a rules file (whatever the working copy holds)."""
    shared = tmp_path / "shared"
    shutil.copytree(ROOT / "shared", shared,
                    ignore=shutil.ignore_patterns("rules.yaml", "__pycache__"))
    return shared


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_layer_build_without_a_rules_file_fails_naming_the_example(
    shared_without_rules: Path, tmp_path: Path
) -> None:
    # A layer without /opt/rules.yaml deploys fine and then fails on the first upload.
    completed = _build_layer_from(shared_without_rules, tmp_path)
    assert completed.returncode != 0
    assert "rules.example.yaml" in completed.stderr
    assert "shared/rules.yaml" in completed.stderr
    assert not (tmp_path / "layer" / "python").exists(), "failed only after building"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_layer_build_puts_shared_rules_yaml_at_the_layer_root(
    shared_without_rules: Path, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLE_RULES, shared_without_rules / "rules.yaml")
    completed = _build_layer_from(shared_without_rules, tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "layer" / "rules.yaml").read_text() == EXAMPLE_RULES.read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_layer_build_without_rules_when_they_live_in_ssm_or_s3(
    shared_without_rules: Path, tmp_path: Path
) -> None:
    completed = _build_layer_from(shared_without_rules, tmp_path, "RULES_FILE=none")
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "layer" / "python" / "convbridge" / "__init__.py").is_file()
    assert not (tmp_path / "layer" / "rules.yaml").exists()


# --- Serverless Application Repository ------------------------------------------------------


def test_serverless_repo_metadata_is_publishable_and_matches_the_package() -> None:
    import convbridge

    template, problems = load_template(TEMPLATE)
    assert template is not None, problems
    application = template["Metadata"]["AWS::ServerlessRepo::Application"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert application["SemanticVersion"] == convbridge.__version__
    assert application["SpdxLicenseId"] == project["license"]
    assert application["HomePageUrl"] == project["urls"]["Homepage"]
    assert application["SourceCodeUrl"] == project["urls"]["Source"]
    # sam package uploads these files, named relative to the template
    assert (TEMPLATE.parent / application["LicenseUrl"]).samefile(ROOT / "LICENSE")
    assert (TEMPLATE.parent / application["ReadmeUrl"]).samefile(ROOT / "README.md")
    # what the repository's CreateApplication accepts
    assert re.fullmatch(r"[a-zA-Z0-9-]{1,140}", application["Name"])
    assert 1 <= len(application["Description"]) <= 256
    assert re.fullmatch(r"[a-z0-9](([a-z0-9]|-(?!-))*[a-z0-9])?", application["Author"])
    assert len(application["Author"]) <= 127
    assert 1 <= len(application["Labels"]) <= 10
    assert all(re.fullmatch(r"[a-zA-Z0-9+\-_:/@]{1,127}", label)
               for label in application["Labels"])
    assert all(application[url].startswith("https://")
               for url in ("HomePageUrl", "SourceCodeUrl"))


# --- one runtime knob: the layers' wheels follow PythonRuntime ------------------------------

SHARED = ROOT / "shared"


def _layer_pip_command(tmp_path: Path, *settings: str) -> subprocess.CompletedProcess[str]:
    # PIP="echo pip": the build runs, and prints the pip command instead of downloading
    environment = {k: v for k, v in os.environ.items()
                   if k not in {"RULES_FILE", "PIP_PYTHON_VERSION", "PYTHON_RUNTIME"}}
    return subprocess.run(
        ["make", "-s", "-f", str(SHARED / "Makefile"), "build-SharedLayer",
         f"ARTIFACTS_DIR={tmp_path / 'layer'}", "PIP=echo pip", "RULES_FILE=none", *settings],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )


def _allowed_runtimes() -> list[str]:
    return list(_source()["Parameters"]["PythonRuntime"]["AllowedValues"])


def test_the_allowed_runtimes_are_the_supported_ones() -> None:
    assert _allowed_runtimes() == ["python3.12", "python3.13", "python3.14"]
    # The layers say which runtime they were built for, the one the functions run on.
    for layer in ("SharedLayer", "StorageSdkLayer"):
        properties = _source()["Resources"][layer]["Properties"]
        assert properties["CompatibleRuntimes"] == [{"Ref": "PythonRuntime"}]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("runtime", _allowed_runtimes())
def test_a_layer_built_for_a_runtime_gets_that_runtimes_wheels(
    tmp_path: Path, runtime: str
) -> None:
    completed = _layer_pip_command(tmp_path, f"PYTHON_RUNTIME={runtime}")
    assert completed.returncode == 0, completed.stderr
    (pip,) = [line.split() for line in completed.stdout.splitlines()
              if line.startswith("pip install")]
    version = runtime.removeprefix("python")
    assert pip[pip.index("--python-version") + 1] == version
    assert pip[pip.index("--platform") + 1] == "manylinux2014_aarch64"
    assert pip[pip.index("--implementation") + 1] == "cp"
    assert "--only-binary=:all:" in pip


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("runtime", _allowed_runtimes())
def test_a_layer_records_the_python_its_wheels_are_for(tmp_path: Path, runtime: str) -> None:
    # importing convbridge compares this record with the running Python (convbridge.layer_build)
    completed = _layer_pip_command(tmp_path, f"PYTHON_RUNTIME={runtime}")
    assert completed.returncode == 0, completed.stderr
    record = tmp_path / "layer" / "python" / "convbridge" / "_layer_build.json"
    assert json.loads(record.read_text()) == {"python": runtime.removeprefix("python"),
                                              "platform": "manylinux2014_aarch64"}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_layer_of_host_wheels_records_the_build_python(tmp_path: Path) -> None:
    # PLATFORM_FLAGS= : pip installs for the build Python, whatever PYTHON_RUNTIME says
    completed = _layer_pip_command(tmp_path, "PYTHON_RUNTIME=python3.13", "PLATFORM_FLAGS=",
                                   f"PYTHON={sys.executable}")
    assert completed.returncode == 0, completed.stderr
    record = tmp_path / "layer" / "python" / "convbridge" / "_layer_build.json"
    assert json.loads(record.read_text()) == {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}", "platform": "host"}


def _a_runtime_other_than_this_python() -> str:
    this = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return next(runtime for runtime in _allowed_runtimes() if runtime != this)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_layer_built_by_its_own_python_ships_byte_code(tmp_path: Path) -> None:
    # /opt is read-only: without shipped .pyc every cold start compiles what it imports
    completed = _layer_pip_command(tmp_path, "PLATFORM_FLAGS=", f"PYTHON={sys.executable}")
    assert completed.returncode == 0, completed.stderr
    package = tmp_path / "layer" / "python" / "convbridge"
    tag = sys.implementation.cache_tag
    for source in package.rglob("*.py"):
        assert (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").is_file(), source
    # unchecked-hash: used as is, whatever mtimes the layer's zip round trip leaves
    header = (package / "__pycache__" / f"__init__.{tag}.pyc").read_bytes()[4:8]
    assert int.from_bytes(header, "little") == 0b01


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_layer_for_another_python_gets_no_byte_code_and_says_why(tmp_path: Path) -> None:
    runtime = _a_runtime_other_than_this_python()
    completed = _layer_pip_command(tmp_path, f"PYTHON_RUNTIME={runtime}",
                                   f"PYTHON={sys.executable}")
    assert completed.returncode == 0, completed.stderr
    assert not list((tmp_path / "layer" / "python").rglob("*.pyc"))
    assert (f"the build Python is {sys.version_info.major}.{sys.version_info.minor}, the layer "
            f"is for {runtime.removeprefix('python')}") in completed.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_default_layer_matches_the_default_runtime(tmp_path: Path) -> None:
    completed = _layer_pip_command(tmp_path)
    assert completed.returncode == 0, completed.stderr
    default = str(_source()["Parameters"]["PythonRuntime"]["Default"]).removeprefix("python")
    assert f"--python-version {default} " in completed.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("settings", "named"), [
    (("PYTHON_RUNTIME=python3.13", "PIP_PYTHON_VERSION=3.12"), "disagrees"),
    (("PYTHON_RUNTIME=python3.11",), "python3.12 python3.13 python3.14"),
])
def test_a_layer_for_another_runtime_is_refused_before_any_download(
    tmp_path: Path, settings: tuple[str, ...], named: str
) -> None:
    completed = _layer_pip_command(tmp_path, *settings)
    assert completed.returncode != 0
    assert named in completed.stderr
    assert "pip install" not in completed.stdout
