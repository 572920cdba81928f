"""Offline deployment check for the SAM template: translate it the way CloudFormation's
``AWS::Serverless-2016-10-31`` transform would (with ``aws-sam-translator``), then lint the
resulting plain CloudFormation with ``cfn-lint`` and check S3 notification event names against
botocore's S3 model. cfn-lint 1.x on the SAM source misses faults that only exist after
translation (a runtime in the generated ``AWS::Lambda::Function``, a dangling ``!Ref`` in a
generated property), translating alone misses everything SAM passes through unchecked, and
neither knows the S3 event names (``s3:ObjectMade`` would fail only mid-deploy). All of it
runs without AWS credentials or network in about a second; ``make lint`` runs
``python -m devstack.template_check template.yaml``.

cfn-lint evaluates conditions with the parameters' defaults, which leave every optional part of
``template.yaml`` (Azure, GCS, SFTP, a KMS key, reserved concurrency) out. So the check runs
twice: as written, and with :data:`EVERY_OPTION_ON` as the defaults, which switches every one
of them on. :func:`resolve_conditions` evaluates a template's conditions
for given parameter values, the way CloudFormation does at deploy time, for tests that compare
what would really be deployed.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from cfnlint.api import lint
from cfnlint.decode import decode
from cfnlint.match import Match
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.model.exceptions import ExceptionWithMessage, InvalidDocumentException
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.utils.py27hash_fix import (
    to_py27_compatible_template,
    undo_mark_unicode_str_in_template,
)

DEFAULT_REGION = "us-east-1"

# `sam build` replaces local code paths with uploaded artifacts; the translator insists on an
# S3 location (it hashes it into layer version ids), so stand one in.
PLACEHOLDER_URI = "s3://placeholder-bucket/placeholder-key"
_LOCAL_URI_PROPERTIES = ("CodeUri", "ContentUri", "DefinitionUri")

# Warnings count as problems: on a template we own they point at real faults (an unused
# parameter, a Ref in the wrong place, a deprecated runtime), and letting them through
# "for now" is how they accumulate. Informational findings are suggestions and are dropped.
_REPORTED_SEVERITIES = frozenset({"error", "warning"})

_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:convbridge/{}-AbCdEf"

#: Plausible values for every optional parameter of ``template.yaml``: with these as defaults
#: every storage and option is deployed, and the provider secrets sit under a prefix other than
#: the default one (so a comparison sees the parameter reach the grant and the environment).
#: Parameters a template does not declare are ignored, so the second pass also runs (as a
#: repeat of the first) on unrelated templates.
EVERY_OPTION_ON: Mapping[str, str | int] = {
    "ProviderSecretsPrefix": "prod/convbridge/providers/",
    "SecretsKmsKeyArn":
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "AzureAccountSecretArn": _SECRET.format("azure-account"),
    "AzureBlobEndpoint": "https://convbridgedemo.blob.core.windows.net",
    "EventGridSecretArn": _SECRET.format("event-grid"),
    "GcsServiceAccountSecretArn": _SECRET.format("gcs-service-account"),
    "PubSubServiceAccount": "convbridge-push@convbridge-demo.iam.gserviceaccount.com",
    "PubSubAudience": "convbridge-demo",
    "SftpSecretArn": _SECRET.format("sftp"),
    "SftpHostKey":
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:convbridge-alarms",
    "CloudConvertSandbox": "true",
    "S3EventsMaxConcurrency": 20,
    "CompletionMaxConcurrency": 20,
    "AzureTriggerConcurrency": 5,
    "GcsTriggerConcurrency": 5,
    # above SftpClaimsMaxConcurrency (5) + 1: the sweep's reservation must never throttle its
    # claims queue's poller
    "SftpSweepConcurrency": 7,
    "ReconcilerConcurrency": 1,
}

#: The other way to deploy the S3 side: watch a bucket that already exists (EventBridge rule
#: instead of a bucket with notifications). A third pass of the check, over
#: :data:`EVERY_OPTION_ON`, since the two bucket modes exclude each other.
EXISTING_BUCKET: Mapping[str, str] = {"SourceBucketMode": "existing"}

#: Values for the parameters without a default, to go with :data:`EVERY_OPTION_ON` where a
#: complete deployment is modelled (infra/cdk/cdk.json holds the same example).
REQUIRED_EXAMPLES: Mapping[str, str] = {
    "SourceBucketName": "convbridge-demo-bucket",
    "ContextSecretArn": _SECRET.format("context"),
}


def _offline_managed_policy_map() -> dict[str, str]:
    """Stand-in for ``ManagedPolicyLoader.load`` (which lists policies through IAM).

    The translator already ships a map of AWS managed policy names; anything not in it stays
    a bare name, which cfn-lint then rejects as not an ARN, so nothing is silently accepted.
    """
    return {}


def _replace_local_uris(template: dict[str, Any]) -> None:
    resources = template.get("Resources")
    if not isinstance(resources, dict):
        return
    for resource in resources.values():
        properties = resource.get("Properties") if isinstance(resource, dict) else None
        if not isinstance(properties, dict):
            continue
        for name in _LOCAL_URI_PROPERTIES:
            value = properties.get(name)
            # Only local paths: an explicit s3:// URI or {Bucket, Key} dict is already valid.
            if isinstance(value, str) and not value.startswith("s3://"):
                properties[name] = PLACEHOLDER_URI


def translate_sam(template: dict[str, Any], region: str = DEFAULT_REGION) -> dict[str, Any]:
    """Translate a SAM template to CloudFormation, as ``samtranslator.translator.transform``
    does, but with an explicit region (the public ``transform`` reads it from the ambient boto3
    session, so the result would depend on the caller's environment) and no IAM call.

    Raises the translator's own exceptions (``InvalidDocumentException`` et al.).
    """
    sam = copy.deepcopy(template)
    _replace_local_uris(sam)
    parameter_values: dict[str, Any] = {}
    # Same pre/post steps as `transform` so generated logical ids match what `sam deploy` makes.
    to_py27_compatible_template(sam, parameter_values)
    # The translator times itself into a metrics object that warns on exit unless published;
    # the dummy publisher drops them, which is all an offline check wants.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(
        None,
        Parser(),
        boto_session=boto3.session.Session(region_name=region),
        metrics=metrics,
    )
    try:
        translated = translator.translate(
            sam,
            parameter_values=parameter_values,
            get_managed_policy_map=_offline_managed_policy_map,
        )
    finally:
        metrics.publish()
    result: dict[str, Any] = undo_mark_unicode_str_in_template(translated)
    return result


def _translation_problems(exc: ExceptionWithMessage) -> list[str]:
    causes = exc.causes if isinstance(exc, InvalidDocumentException) else [exc]
    return [f"SAM transform: {cause.message}" for cause in causes]


def _describe_match(match: Match) -> str:
    # Line numbers would point into the translated JSON, which nobody reads; the path names
    # the resource (SAM keeps the source logical ids) and the property.
    path = getattr(match, "path", None) or []
    where = "/".join(str(part) for part in path) or "template"
    return f"{match.rule.id} {where}: {match.message}"


def lint_translated(template: dict[str, Any], region: str = DEFAULT_REGION) -> list[str]:
    """cfn-lint findings (errors and warnings) on an already translated template."""
    matches = lint(json.dumps(template, indent=1), regions=[region])
    return [
        _describe_match(match)
        for match in matches
        if match.rule.severity in _REPORTED_SEVERITIES
    ]


@cache
def s3_event_names() -> frozenset[str]:
    """Every S3 notification event name, from the S3 API model that ships with botocore
    (offline, and as current as the installed botocore)."""
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.shape_for("Event")
    return frozenset(getattr(shape, "enum", ()))


def s3_notification_problems(template: dict[str, Any]) -> list[str]:
    """Event names in bucket notifications that S3 does not know.

    Neither the translator (which copies the SAM ``Events`` value through) nor cfn-lint 1.x
    (whose schema types ``Event`` as a bare string) checks them, and CloudFormation only fails
    at deploy time, after the functions and roles were already created.
    """
    problems: list[str] = []
    known = s3_event_names()
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::S3::Bucket":
            continue
        notifications = (resource.get("Properties") or {}).get("NotificationConfiguration")
        if not isinstance(notifications, dict):
            continue
        for kind in ("LambdaConfigurations", "QueueConfigurations", "TopicConfigurations"):
            entries = notifications.get(kind)
            if not isinstance(entries, list):
                continue
            for index, entry in enumerate(entries):
                event = entry.get("Event") if isinstance(entry, dict) else None
                # Intrinsics (a dict) cannot be resolved offline; CloudFormation checks those.
                if isinstance(event, str) and event not in known:
                    where = f"Resources/{logical_id}/Properties/NotificationConfiguration"
                    problems.append(
                        f"S3 event {where}/{kind}/{index}/Event: {event!r} is not an S3 "
                        f"event type (expected one of: {', '.join(sorted(known))})"
                    )
    return problems


def load_template(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """Read YAML or JSON with CloudFormation's short-form tags (``!Ref``, ``!Sub``...)."""
    template, matches = decode(str(path))
    if matches:
        return None, [f"{path}:{m.linenumber}: {m.rule.id} {m.message}" for m in matches]
    if not isinstance(template, dict):
        return None, [f"{path}: not a template (top level is not a mapping)"]
    # cfn-lint's loader returns str/dict subclasses carrying source marks; a JSON round trip
    # gives the translator plain values (and an independent copy it is free to mutate).
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain, []


def with_defaults(template: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``template`` whose declared parameters default to ``values`` (others ignored)."""
    variant = copy.deepcopy(template)
    parameters = variant.get("Parameters") or {}
    for name, value in values.items():
        if isinstance(parameters.get(name), dict):
            parameters[name]["Default"] = value
    return variant


def _check_document(template: dict[str, Any], region: str) -> list[str]:
    try:
        translated = translate_sam(template, region)
    except ExceptionWithMessage as exc:
        # Nothing to lint: the translator stops at the first broken document.
        return _translation_problems(exc)
    return s3_notification_problems(translated) + lint_translated(translated, region)


def check_template(path: str | Path, region: str = DEFAULT_REGION) -> list[str]:
    """Every problem found in the SAM template at ``path``, as written, with every option
    switched on (:data:`EVERY_OPTION_ON`), and with that and an existing bucket
    (:data:`EXISTING_BUCKET`); an empty list means clean."""
    template, problems = load_template(Path(path))
    if template is None:
        return problems
    problems = _check_document(template, region)
    if problems:
        return problems
    for label, values in (("with every option on", EVERY_OPTION_ON),
                          ("with an existing bucket", {**EVERY_OPTION_ON, **EXISTING_BUCKET})):
        variant = with_defaults(template, values)
        if variant == template:
            continue
        problems = [f"{label}: {problem}" for problem in _check_document(variant, region)]
        if problems:
            return problems
    return []


# --- conditions, evaluated as CloudFormation would --------------------------------------------

_NO_VALUE = {"Ref": "AWS::NoValue"}


def parameter_values(template: Mapping[str, Any],
                     overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Each declared parameter's value (override, else default) as the string CloudFormation
    compares in ``Fn::Equals``."""
    values: dict[str, str] = {}
    for name, spec in (template.get("Parameters") or {}).items():
        value = (overrides or {}).get(name, spec.get("Default"))
        if value is not None:
            values[name] = str(value)
    return values


def _evaluate(value: Any, params: Mapping[str, str], conditions: Mapping[str, Any],
              seen: dict[str, bool]) -> Any:
    """The value of a condition expression (the functions conditions may use)."""
    if not isinstance(value, dict):
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else value
    if len(value) != 1:
        raise ValueError(f"not a condition function: {value!r}")
    ((name, argument),) = value.items()
    def ev(item: Any) -> Any:
        return _evaluate(item, params, conditions, seen)
    if name == "Ref":
        if argument not in params:
            raise ValueError(f"condition refers to unknown parameter {argument!r}")
        return params[argument]
    if name == "Condition":
        if argument not in seen:
            seen[argument] = bool(ev(conditions[argument]))
        return seen[argument]
    if name == "Fn::Equals":
        left, right = (ev(item) for item in argument)
        return str(left) == str(right)
    if name == "Fn::Not":
        return not ev(argument[0])
    if name == "Fn::And":
        return all(ev(item) for item in argument)
    if name == "Fn::Or":
        return any(ev(item) for item in argument)
    if name == "Fn::Select":
        index, items = argument
        return ev(items)[int(ev(index))]
    if name == "Fn::Split":
        delimiter, text = argument
        return str(ev(text)).split(delimiter)
    raise ValueError(f"{name} is not supported in conditions here")


def evaluate_conditions(template: Mapping[str, Any],
                        overrides: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """Every condition of ``template`` for the given parameter values (defaults otherwise)."""
    params = parameter_values(template, overrides)
    conditions = template.get("Conditions") or {}
    seen: dict[str, bool] = {}
    for name in conditions:
        _evaluate({"Condition": name}, params, conditions, seen)
    return seen


def _prune(value: Any, truth: Mapping[str, bool]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            condition, when_true, when_false = value["Fn::If"]
            return _prune(when_true if truth[condition] else when_false, truth)
        pruned = {key: _prune(item, truth) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item != _NO_VALUE}
    if isinstance(value, list):
        items = [_prune(item, truth) for item in value]
        return [item for item in items if item != _NO_VALUE]
    return value


def resolve_conditions(template: Mapping[str, Any],
                       overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``template`` as deployed with these parameter values: resources and outputs whose
    condition is false removed, every ``Fn::If`` replaced by its chosen arm, and
    ``AWS::NoValue`` dropped. Other intrinsics (Ref, GetAtt, Sub) stay as they are."""
    truth = evaluate_conditions(template, overrides)
    resolved: dict[str, Any] = {}
    for section, body in template.items():
        if section in {"Resources", "Outputs"} and isinstance(body, dict):
            kept = {}
            for logical_id, item in body.items():
                condition = item.get("Condition") if isinstance(item, dict) else None
                if condition is not None and not truth[condition]:
                    continue
                item = {k: v for k, v in item.items() if k != "Condition"}
                kept[logical_id] = _prune(item, truth)
            resolved[section] = kept
        elif section in {"Conditions", "Rules"}:
            continue
        else:
            resolved[section] = copy.deepcopy(body)
    return resolved


_SUB_NAME = re.compile(r"\$\{([^}!][^}]*)\}")


def render(value: Any, params: Mapping[str, str],
           rename: Callable[[str], str] = lambda logical_id: logical_id) -> Any:
    """``value`` with intrinsics spelled out as text, for comparing templates written in
    different styles (SAM's ``Fn::Sub``, CDK's ``Fn::Join``): parameters become their values,
    pseudo parameters stay ``${AWS::Region}``, resources become ``${Name}`` and
    ``${Name.Attribute}`` with ``rename`` applied to the logical id, and scalars become text.
    """
    def named(name: str) -> str:
        if name in params:
            return params[name]
        if name.startswith("AWS::"):
            return "${" + name + "}"
        logical_id, dot, attribute = name.partition(".")
        return "${" + rename(logical_id) + dot + attribute + "}"

    if isinstance(value, list):
        return [render(item, params, rename) for item in value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return named(argument)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) \
                else argument.split(".", 1)
            return named(f"{logical_id}.{attribute}")
        if function == "Fn::Join":
            delimiter, items = argument
            return delimiter.join(str(render(item, params, rename)) for item in items)
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            local = {k: str(render(v, params, rename)) for k, v in variables.items()}
            return _SUB_NAME.sub(lambda m: local.get(m.group(1)) or named(m.group(1)), text)
        if function == "Fn::Select":
            index, items = argument
            return render(items, params, rename)[int(render(index, params, rename))]
        if function == "Fn::Split":
            delimiter, text = argument
            return str(render(text, params, rename)).split(delimiter)
    return {key: render(item, params, rename) for key, item in value.items()}


# --- what a role may do ------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(template: Mapping[str, Any], role_id: str) -> list[dict[str, Any]]:
    """Every statement that applies to the role ``role_id`` of a resolved template: its inline
    policies, the managed policies of this template attached to it (by ``ManagedPolicyArns``
    or the policy's ``Roles``), and ``AWS::IAM::Policy`` resources naming it. AWS managed
    policies are not in the template; callers check those by ARN."""
    resources = template["Resources"]
    role = resources[role_id]["Properties"]
    documents = [policy["PolicyDocument"] for policy in role.get("Policies", [])]
    attached = {arn["Ref"] for arn in role.get("ManagedPolicyArns", [])
                if isinstance(arn, dict) and "Ref" in arn}
    for logical_id, resource in resources.items():
        if resource["Type"] not in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            continue
        properties = resource["Properties"]
        names = {r.get("Ref") for r in properties.get("Roles", []) if isinstance(r, dict)}
        if logical_id in attached or role_id in names:
            documents.append(properties["PolicyDocument"])
    return [statement for document in documents for statement in _as_list(document["Statement"])]


def permissions(template: Mapping[str, Any], role_id: str, params: Mapping[str, str],
                rename: Callable[[str], str] = lambda logical_id: logical_id,
                ) -> set[tuple[str, str, str]]:
    """(action in lower case, resource, condition as JSON or "") for every Allow the role has,
    with intrinsics rendered by :func:`render`."""
    found = set()
    for statement in role_statements(template, role_id):
        if statement.get("Effect") != "Allow":
            continue
        condition = statement.get("Condition")
        condition_text = json.dumps(render(condition, params, rename), sort_keys=True) \
            if condition else ""
        for action in _as_list(statement.get("Action", [])):
            for resource in _as_list(statement.get("Resource", [])):
                found.add((action.lower(), str(render(resource, params, rename)),
                           condition_text))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m devstack.template_check TEMPLATE", file=sys.stderr)
        return 2
    problems = check_template(args[0])
    if problems:
        for problem in problems:
            print(f"{args[0]}: {problem}")
        return 1
    print(f"{args[0]}: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
