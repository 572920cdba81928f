"""The SAM template passes the offline deployment check, the check catches the faults it
exists for (each broken variant is the real template with one edit, so a passing check here
means it would pass there too), and the translated template keeps the least-privilege
promises of the design: no wildcard resource for S3, Secrets Manager, KMS, DynamoDB or SQS, a
grant role only the trigger can assume, no listing anywhere in what a provider can be handed,
and deletes only under the watched prefix. It also pins the delivery guarantees: S3 events and
completions arrive through queues with partial batch failures, dead-letter queues and alarms.
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

SENSITIVE_SERVICES = ("s3:", "secretsmanager:", "kms:", "dynamodb:", "sqs:")
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
                              "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"}:
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
            "Event: s3:ObjectCreated:*", "Event: s3:ObjectMade", ["s3:ObjectMade"],
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


def test_alarm_topic_variant_is_clean(tmp_path: Path) -> None:
    # cfn-lint evaluates the HasAlarmTopic condition with the default (empty); this deploys
    # the other arm, AlarmActions set to the topic.
    text = TEMPLATE.read_text()
    original = 'Default: ""'
    assert text.count(original) == 1
    variant = tmp_path / "template.yaml"
    topic = "arn:aws:sns:us-east-1:123456789012:convbridge-alarms"
    variant.write_text(text.replace(original, f"Default: {topic}"))
    assert check_template(variant) == []


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
    # A managed policy is a statement this test cannot see; only the logs one is allowed. (An
    # SQS event on a SAM-generated role would attach AWSLambdaSQSQueueExecutionRole, which
    # allows every queue: hence explicit roles for both functions.)
    roles = _resources(translated, "AWS::IAM::Role")
    assert set(roles) == {"S3TriggerRole", "WebhookFunctionRole", "GrantRole"}
    for role in roles.values():
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


def _grants(translated: dict[str, Any], service: str) -> dict[str, set[tuple[str, str]]]:
    """What each role or resource policy allows for ``service``: (action, resource) pairs
    (resources as text, intrinsics included), keyed by logical id. Denies grant nothing."""
    found: dict[str, set[tuple[str, str]]] = {}
    for logical_id, statement in _all_statements(translated):
        if statement["Effect"] != "Allow":
            continue
        for action in _actions(statement):
            if action.startswith(service):
                for resource in _as_list(statement["Resource"]):
                    found.setdefault(logical_id, set()).add((action, str(resource)))
    return found


IDEMPOTENCY_ACTIONS = ("getitem", "putitem", "updateitem", "deleteitem")


def test_idempotency_table_grants_are_the_powertools_calls(translated: dict[str, Any]) -> None:
    table = str({"Fn::GetAtt": ["IdempotencyTable", "Arn"]})
    expected = {(f"dynamodb:{action}", table) for action in IDEMPOTENCY_ACTIONS}
    assert _grants(translated, "dynamodb:") == {
        "S3TriggerRole": expected, "WebhookFunctionRole": expected,
    }


def test_queue_grants_are_per_role_and_per_queue(translated: dict[str, Any]) -> None:
    s3_events = str({"Fn::GetAtt": ["S3EventsQueue", "Arn"]})
    completions = str({"Fn::GetAtt": ["CompletionQueue", "Arn"]})
    consume = ("sqs:receivemessage", "sqs:deletemessage", "sqs:getqueueattributes")
    assert _grants(translated, "sqs:") == {
        "S3TriggerRole": {(action, s3_events) for action in consume},
        "WebhookFunctionRole": {(action, completions) for action in consume}
        | {("sqs:sendmessage", completions)},
        # The one resource policy: S3 (conditioned, see below) sending to the events queue.
        "S3EventsQueuePolicy": {("sqs:sendmessage", s3_events)},
    }


def test_webhook_can_delete_only_under_the_watched_prefix(translated: dict[str, Any]) -> None:
    watched = str(
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${SourceBucketName}/${WatchedPrefix}*"}
    )
    s3_grants = _grants(translated, "s3:")
    deletes = {
        logical_id: {pair for pair in pairs if pair[0].startswith("s3:delete")}
        for logical_id, pairs in s3_grants.items()
    }
    # s3:DeleteObject only (a delete marker on this versioned bucket); no DeleteObjectVersion.
    assert {k: v for k, v in deletes.items() if v} == {
        "WebhookFunctionRole": {("s3:deleteobject", watched)}
    }
    # The copy before the delete may read the exact version, and only under the prefix too.
    webhook = s3_grants["WebhookFunctionRole"]
    assert {("s3:getobject", watched), ("s3:getobjectversion", watched)} <= webhook
    versioned_reads = {
        (logical_id, resource)
        for logical_id, pairs in s3_grants.items()
        for action, resource in pairs
        if action == "s3:getobjectversion"
    }
    assert versioned_reads == {("WebhookFunctionRole", watched)}


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
    common["CONVBRIDGE_IDEMPOTENCY_TABLE"] = {"Ref": "IdempotencyTable"}
    trigger_only = {
        "CONVBRIDGE_WEBHOOK_URL": {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]},
        "CONVBRIDGE_GRANT_ROLE_ARN": {"Fn::GetAtt": ["GrantRole", "Arn"]},
    }
    assert _environment(translated, "S3TriggerFunction") == common | trigger_only
    webhook_only = {"CONVBRIDGE_COMPLETION_QUEUE_URL": {"Ref": "CompletionQueue"}}
    assert _environment(translated, "WebhookFunction") == common | webhook_only


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
    assert {name: output["Value"] for name, output in outputs.items()} == {
        "WebhookUrl": {"Fn::GetAtt": ["WebhookFunctionUrl", "FunctionUrl"]},
        "SourceBucket": {"Ref": "SourceBucket"},
        "GrantRoleArn": {"Fn::GetAtt": ["GrantRole", "Arn"]},
        "IdempotencyTableName": {"Ref": "IdempotencyTable"},
        "S3EventsQueueUrl": {"Ref": "S3EventsQueue"},
        "S3EventsDeadLetterQueueUrl": {"Ref": "S3EventsDeadLetterQueue"},
        "CompletionQueueUrl": {"Ref": "CompletionQueue"},
        "CompletionDeadLetterQueueUrl": {"Ref": "CompletionDeadLetterQueue"},
    }


def test_bucket_notifies_the_queue_only_for_the_watched_prefix(
    translated: dict[str, Any],
) -> None:
    resource = translated["Resources"]["SourceBucket"]
    # S3 tests the destination when the notification is set: the queue policy must be there.
    assert resource["DependsOn"] == "S3EventsQueuePolicy"
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


def test_only_the_source_bucket_may_send_s3_events(translated: dict[str, Any]) -> None:
    policy = translated["Resources"]["S3EventsQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "S3EventsQueue"}]
    (statement,) = _statements(translated["Resources"]["S3EventsQueuePolicy"])
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


def _event_source_mappings(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function logical id -> its one event source mapping's properties."""
    found: dict[str, dict[str, Any]] = {}
    for mapping in _resources(translated, "AWS::Lambda::EventSourceMapping").values():
        properties = mapping["Properties"]
        function = properties["FunctionName"]["Ref"]
        assert function not in found, f"{function} has several event sources"
        found[function] = properties
    return found


def test_functions_consume_their_queues_with_partial_batch_failures(
    translated: dict[str, Any],
) -> None:
    mappings = _event_source_mappings(translated)
    assert set(mappings) == {"S3TriggerFunction", "WebhookFunction"}
    trigger, webhook = mappings["S3TriggerFunction"], mappings["WebhookFunction"]
    assert trigger["EventSourceArn"] == {"Fn::GetAtt": ["S3EventsQueue", "Arn"]}
    assert trigger["BatchSize"] == 10
    assert 0 < trigger["MaximumBatchingWindowInSeconds"] <= 5
    assert webhook["EventSourceArn"] == {"Fn::GetAtt": ["CompletionQueue", "Arn"]}
    assert webhook["BatchSize"] == 5
    for mapping in (trigger, webhook):
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_s3_no_longer_invokes_the_trigger_directly(translated: dict[str, Any]) -> None:
    permissions = _resources(translated, "AWS::Lambda::Permission").values()
    assert not [p for p in permissions if p["Properties"]["Principal"] == "s3.amazonaws.com"]
    bucket = translated["Resources"]["SourceBucket"]["Properties"]
    assert "LambdaConfigurations" not in bucket["NotificationConfiguration"]


def test_visibility_timeouts_outlast_their_consumers(translated: dict[str, Any]) -> None:
    # AWS: at least 6 x the function timeout plus the batching window, or a batch still being
    # worked on is delivered again; SQS caps it at 12 hours.
    resources = translated["Resources"]
    for function, mapping in _event_source_mappings(translated).items():
        timeout = resources[function]["Properties"]["Timeout"]
        queue = resources[mapping["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]
        window = mapping.get("MaximumBatchingWindowInSeconds", 0)
        assert 6 * timeout + window <= queue["VisibilityTimeout"] <= 12 * 3600, function
    assert resources["S3TriggerFunction"]["Properties"]["Timeout"] == 30
    assert resources["WebhookFunction"]["Properties"]["Timeout"] == 900


QUEUES_AND_DLQS = {
    "S3EventsQueue": "S3EventsDeadLetterQueue",
    "CompletionQueue": "CompletionDeadLetterQueue",
}


def test_queues_have_dead_letter_queues(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    queues = _resources(translated, "AWS::SQS::Queue")
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


def test_each_dead_letter_queue_has_an_alarm(translated: dict[str, Any]) -> None:
    alarms = _resources(translated, "AWS::CloudWatch::Alarm").values()
    watched = set()
    for alarm in alarms:
        properties = alarm["Properties"]
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
        assert properties["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }
    assert watched == set(QUEUES_AND_DLQS.values())
    assert translated["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }


def test_idempotency_table_matches_powertools_defaults(translated: dict[str, Any]) -> None:
    table = translated["Resources"]["IdempotencyTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


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
