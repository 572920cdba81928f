"""Offline deployment check for the SAM template: translate it the way CloudFormation's
``AWS::Serverless-2016-10-31`` transform would (with ``aws-sam-translator``), then lint the
resulting plain CloudFormation with ``cfn-lint`` and check S3 notification event names against
botocore's S3 model. cfn-lint 1.x on the SAM source misses faults that only exist after
translation (a runtime in the generated ``AWS::Lambda::Function``, a dangling ``!Ref`` in a
generated property), translating alone misses everything SAM passes through unchecked, and
neither knows the S3 event names (``s3:ObjectMade`` would fail only mid-deploy). All of it
runs without AWS credentials or network in about a second; ``make lint`` runs
``python -m devstack.template_check template.yaml``.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
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


def check_template(path: str | Path, region: str = DEFAULT_REGION) -> list[str]:
    """Every problem found in the SAM template at ``path``; an empty list means clean."""
    template, problems = load_template(Path(path))
    if template is None:
        return problems
    try:
        translated = translate_sam(template, region)
    except ExceptionWithMessage as exc:
        # Nothing to lint: the translator stops at the first broken document.
        return _translation_problems(exc)
    return s3_notification_problems(translated) + lint_translated(translated, region)


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
