"""The ``convbridge`` command: local tools around the deployed functions."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from convbridge import __version__

if TYPE_CHECKING:
    from convbridge.rulecheck import Problem
    from convbridge.rules import RuleSet


#: exit codes, the same for every subcommand
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EPILOG = """exit codes:
  0  ok
  1  problems found (invalid or unworkable rules, failed resubmissions, no rule for the object,
     failure reports listed by status)
  2  usage error (unknown option, missing argument)
  3  an input could not be read (rules location, template, stack, AWS credentials, records),
     or the --html page could not be written"""


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="convbridge", description="Local tools around the deployed convbridge functions.",
        epilog=EPILOG, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"convbridge {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="'convbridge COMMAND --help' lists its options")
    check = commands.add_parser(
        "check-rules", epilog=EPILOG, formatter_class=formatter,
        help="validate a rules file and check that every rule can work",
        description="Validate a rules file and check, offline, that each rule's provider can "
        "reach its storage, its read grant can be minted and its output format can be made "
        "from its suffixes. With --template or --stack, also check the rules against the "
        "deployment: watched bucket and prefix, enabled triggers, provider secrets. Every "
        "problem is printed, each with its rule.")
    check.add_argument("location", metavar="RULES",
                       help="the rules file: a path, ssm:NAME or s3://bucket/key (read as the "
                            "functions read it, with the AWS credentials of the environment)")
    where = check.add_mutually_exclusive_group()
    where.add_argument("--template", metavar="FILE",
                       help="check against the stack this SAM template would create")
    where.add_argument("--stack", metavar="NAME",
                       help="check against a deployed stack: its template and parameters "
                            "(CloudFormation), and that the provider secrets exist")
    check.add_argument("--parameter-overrides", nargs="+", default=[], metavar="KEY=VALUE",
                       help="template parameters, as for sam deploy (on top of the stack's "
                            "with --stack; any parameter the template declares)")
    explain = commands.add_parser(
        "explain", epilog=EPILOG, formatter_class=formatter,
        help="show what the bridge would do with one object, offline",
        description="Show the rule that takes an object (or why each rule does not), its "
        "output, record and failure keys, the grants that would be minted, the route and the "
        "job document the provider would get, credentials redacted. Creates nothing and "
        "sends no request.")
    explain.add_argument("uri", metavar="URI",
                         help="s3://bucket/key, azure://account/container/key, "
                              "gs://bucket/key or sftp://host[:port]/path")
    explain.add_argument("--rules", required=True, metavar="RULES",
                         help="the rules file: a path, ssm:NAME or s3://bucket/key")
    retry = commands.add_parser(
        "retry", epilog=EPILOG, formatter_class=formatter,
        help="resubmit the sources listed in failure reports (--stack: inside the deployed "
        "S3 trigger function; otherwise here, with its CONVBRIDGE_* environment)",
        description="Resubmit every source a failure report names, putting moved sources "
        "back first and removing each report resubmitted. With --stack NAME the deployed S3 "
        "trigger function does it (it alone may mint S3 write grants): the command invokes "
        "it, again for as long as it answers with a cursor, and prints what it did; this "
        "needs lambda:InvokeFunction on it and cloudformation:DescribeStacks. "
        "Without --stack the command does it itself, with the CONVBRIDGE_* environment of "
        "the deployed functions.")
    retry.add_argument("--rule", help="only this rule's failure reports")
    retry.add_argument("--stack", metavar="NAME",
                       help="run inside this deployed stack's S3 trigger function")
    retry.add_argument("--dry-run", action="store_true",
                       help="list what would be resubmitted; resubmit and change nothing")
    reconcile = commands.add_parser(
        "reconcile", epilog=EPILOG, formatter_class=formatter,
        help="settle jobs whose callbacks never came by asking their provider "
        "(uses the deployed function's CONVBRIDGE_* environment)")
    reconcile.add_argument("--rule", help="only this rule's result records")
    reconcile.add_argument("--older-than", type=int, metavar="SECONDS",
                           help="ask about jobs submitted at least this long ago, instead of "
                                "after each provider's deadline")
    _status_parser(commands.add_parser(
        "status", epilog=EPILOG, formatter_class=formatter,
        help="counts, job latency and failures from the result records and failure reports "
        "(uses the deployed function's CONVBRIDGE_* environment)",
        description="Read each rule's result records and failure reports, with bounded, "
        "paginated listings, and print the records per rule, provider and status, the job "
        "latency (median, p95, max) and the failures with their code and message. With "
        "--html, also write them as one self-contained HTML page, outputs linked."))
    commands.add_parser("routes", epilog=EPILOG, formatter_class=formatter,
                        help="what each provider is handed per storage: scoped grants, or "
                        "the relay")
    return parser


def _status_parser(status: argparse.ArgumentParser) -> None:
    from convbridge.status import DEFAULT_MAX_RECORDS, PROGRESS_EVERY

    status.add_argument("--rule", help="only this rule's records")
    status.add_argument("--since", metavar="WHEN",
                        help="only records written since then: a duration back from now "
                             "(90s, 30m, 24h, 7d, 2w) or an ISO 8601 time (UTC if no zone)")
    status.add_argument("--failed", action="store_true",
                        help="only failed and rejected records")
    status.add_argument("--html", metavar="FILE",
                        help="also write the status as a self-contained HTML page to FILE")
    status.add_argument("--max-records", type=_positive, default=DEFAULT_MAX_RECORDS,
                        metavar="N",
                        help="read at most N records per rule from its results and from its "
                             f"failures (default {DEFAULT_MAX_RECORDS}); the output says when "
                             "a listing stopped there")
    status.add_argument("--progress", action="store_true",
                        help=f"show the progress line on stderr (every {PROGRESS_EVERY} "
                             "records) even when stderr is not a terminal")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "routes":
        from convbridge.routes import capability_table, render

        print(render(capability_table()))
        return EXIT_OK
    if args.command == "retry":
        if args.stack:
            return _retry_in_stack(args.stack, args.rule, args.dry_run)
        return _retry(args.rule, args.dry_run)
    if args.command == "reconcile":
        return _reconcile(args.rule, args.older_than)
    if args.command == "status":
        return _status(parser, args)
    if args.command == "explain":
        return _explain(parser, args.uri, args.rules)
    if args.command == "check-rules":
        return _check_rules(parser, args.location, args.template, args.stack,
                            args.parameter_overrides)
    return EXIT_USAGE


def _load(location: str) -> tuple[RuleSet | None, int]:
    """The rules at ``location`` read the way the functions read them, or None and the exit
    code after printing why not."""
    from convbridge.bridge import s3_rules_reader
    from convbridge.clients import CloudClients
    from convbridge.errors import ConfigError, RulesError
    from convbridge.rules import load_rules
    from convbridge.settings import Settings

    settings = Settings(
        rules_location=location, context_secret_name="", idempotency_table="",
        s3_endpoint_url=os.environ.get("CONVBRIDGE_S3_ENDPOINT_URL") or None,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1")
    clients = CloudClients(settings)
    try:
        return load_rules(location, read_ssm=clients.read_ssm,
                          read_s3=s3_rules_reader(settings, clients)), EXIT_OK
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return None, EXIT_PROBLEMS
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None, EXIT_UNREADABLE
    except Exception as exc:  # noqa: BLE001 (botocore's errors: credentials, access, missing)
        print(f"cannot read rules from {location}: {exc}", file=sys.stderr)
        return None, EXIT_UNREADABLE


def _check_rules(parser: argparse.ArgumentParser, location: str, template: str | None,
                 stack: str | None, overrides: list[str]) -> int:
    from convbridge.errors import ConfigError
    from convbridge.rulecheck import (
        Deployment,
        deployment_problems,
        offline_problems,
        parse_overrides,
        parse_template,
    )

    try:
        parameters = parse_overrides(overrides)
    except ValueError as exc:
        parser.error(f"--parameter-overrides: {exc}")
    if parameters and not (template or stack):
        parser.error("--parameter-overrides needs --template or --stack")
    rules, code = _load(location)
    if rules is None:
        return code
    for rule in rules.rules:
        print(f"{rule.name}: {rule.storage}://{rule.location}/{rule.prefix}* "
              f"-> {rule.output_format} via {rule.provider} into {rule.outputs_prefix}")
    problems = offline_problems(rules)
    try:
        if template:
            deployment = Deployment.of(parse_template(Path(template).read_text("utf-8")),
                                       parameters)
            found, notes = deployment_problems(rules, deployment)
        elif stack:
            found, notes = _stack_problems(rules, stack, parameters)
        else:
            found, notes = [], []
    except (OSError, ConfigError) as exc:
        print(f"cannot read the deployment: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    for note in notes:
        print(note)
    order = {rule.name: index for index, rule in enumerate(rules.rules)}
    # grouped by rule, in file order; problems of the deployment itself last
    problems = sorted([*problems, *found], key=lambda p: order.get(p.rule or "", len(order)))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def _stack_problems(rules: RuleSet, stack: str,
                    parameters: dict[str, str]) -> tuple[list[Problem], list[str]]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from convbridge.errors import ConfigError
    from convbridge.rulecheck import deployment_problems, stack_deployment

    secrets = boto3.client("secretsmanager")

    def secret_exists(name: str) -> bool:
        try:
            secrets.describe_secret(SecretId=name)
        except secrets.exceptions.ResourceNotFoundException:
            return False
        return True

    try:
        deployment = stack_deployment(boto3.client("cloudformation"), stack, parameters)
        return deployment_problems(rules, deployment, secret_exists=secret_exists)
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(f"stack {stack}: {exc}") from exc


def _explain(parser: argparse.ArgumentParser, uri: str, location: str) -> int:
    from convbridge.explain import GrantLifetimes, explain, parse_uri

    try:
        ref = parse_uri(uri)
    except ValueError as exc:
        parser.error(str(exc))
    rules, code = _load(location)
    if rules is None:
        return code
    taken, lines = explain(rules, ref, GrantLifetimes.from_env())
    print("\n".join(lines))
    return EXIT_OK if taken else EXIT_PROBLEMS


def _status(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from convbridge.bridge import Bridge
    from convbridge.status import (
        Filters,
        ProgressLine,
        collect,
        parse_since,
        render_html,
        render_text,
    )

    now = datetime.now(UTC)
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        parser.error(f"--since: {exc}")
    filters = Filters(rule=args.rule, since=since, failed_only=args.failed)
    progress = ProgressLine(sys.stderr, args.max_records) \
        if args.progress or sys.stderr.isatty() else None
    try:
        bridge = Bridge.from_env()
        if args.rule and args.rule not in {rule.name for rule in bridge.rules.rules}:
            print(f"no rule named {args.rule!r}", file=sys.stderr)
            return EXIT_USAGE
        status = collect(bridge, filters, max_records=args.max_records, progress=progress)
    except Exception as exc:  # noqa: BLE001 (ConfigError, StorageError, botocore's errors)
        print(f"cannot read the records: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    finally:
        if progress is not None:
            progress.close()
    print(render_text(status, args.max_records))
    if args.html:
        try:
            Path(args.html).write_text(render_html(status, filters, args.max_records, now),
                                       encoding="utf-8")
        except OSError as exc:
            print(f"cannot write {args.html}: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        print(f"written to {args.html}")
    return EXIT_PROBLEMS if status.failures else EXIT_OK


def _budget() -> Callable[[], int]:
    """The remaining time of a command run, counted as a Lambda's would be (15 minutes)."""
    budget_ms = 15 * 60 * 1000
    started = time.monotonic()
    return lambda: budget_ms - int((time.monotonic() - started) * 1000)


def _retry(rule: str | None, dry_run: bool) -> int:
    from convbridge.bridge import Bridge
    from convbridge.errors import ConvbridgeError
    from convbridge.events.retry import BadRetryEvent, RetryRequest
    from convbridge.http import deadline_from
    from convbridge.pipeline import retry_failures

    remaining_ms = _budget()
    try:
        bridge = Bridge.from_env()
        # claims taken by this run expire with it, as they would with a Lambda's
        bridge.claims.register_lambda_context(SimpleNamespace(
            get_remaining_time_in_millis=remaining_ms))
        with deadline_from(remaining_ms):
            run = retry_failures(bridge, RetryRequest(rule=rule, dry_run=dry_run))
    except BadRetryEvent as exc:
        print(f"retry refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConvbridgeError as exc:
        print(f"retry failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    tally = _RetryTally()
    tally.add(run.summary())
    return tally.finish(dry_run)


class _RetryTally:
    """Prints each resubmission as it is answered and counts them over every invocation."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, summary: dict[str, Any]) -> None:
        for item in summary.get("items") or []:
            status = str(item.get("status"))
            self.counts[status] = self.counts.get(status, 0) + 1
            detail = f" as job {item['job_id']}" if item.get("job_id") else (
                f" ({item['reason']})" if item.get("reason") else "")
            label = "would resubmit" if status == "would_resubmit" else status
            print(f"{item.get('object')}: {label}{detail}")

    def finish(self, dry_run: bool) -> int:
        if not self.counts:
            print("nothing to retry: no failure reports found")
            return EXIT_OK
        print(("dry run, nothing changed: " if dry_run else "")
              + ", ".join(f"{count} {status.replace('_', ' ')}"
                          for status, count in sorted(self.counts.items())))
        fine = {"would_resubmit"} if dry_run else {"submitted", "duplicate"}
        return EXIT_OK if set(self.counts) <= fine else EXIT_PROBLEMS


#: the S3 trigger's logical id in template.yaml, for stacks deployed before its output
TRIGGER_LOGICAL_ID = "S3TriggerFunction"
#: the output naming the S3 trigger: the key itself in template.yaml; in a CDK stack, after
#: the construct's path and before the hash CDK appends
TRIGGER_OUTPUT = re.compile(r"(?:^|Outputs)S3TriggerFunctionName(?:[0-9A-F]{8})?$")


def _trigger_function(cloudformation: Any, stack: str) -> str:
    """The name of the stack's S3 trigger function: from its output (SAM and CDK stacks), else
    from the SAM logical id."""
    [described] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    for output in described.get("Outputs") or []:
        if TRIGGER_OUTPUT.search(str(output.get("OutputKey"))):
            return str(output["OutputValue"])
    return str(cloudformation.describe_stack_resource(
        StackName=stack, LogicalResourceId=TRIGGER_LOGICAL_ID,
    )["StackResourceDetail"]["PhysicalResourceId"])


def _retry_in_stack(stack: str, rule: str | None, dry_run: bool) -> int:
    """Invoke the stack's S3 trigger with retry events until it answers without a cursor."""
    import json

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from convbridge.events.retry import RetryCursor, RetryRequest

    tally = _RetryTally()
    try:
        function = _trigger_function(boto3.client("cloudformation"), stack)
        invoke = boto3.client("lambda").invoke
        cursor: RetryCursor | None = None
        while True:
            request = RetryRequest(rule=rule, dry_run=dry_run, cursor=cursor)
            answer = invoke(FunctionName=function, InvocationType="RequestResponse",
                            Payload=json.dumps(request.to_json()).encode("utf-8"))
            summary = json.loads(answer["Payload"].read() or b"null")
            if answer.get("FunctionError") or not isinstance(summary, dict):
                print(f"{function} failed: {summary}", file=sys.stderr)
                return EXIT_PROBLEMS
            if "error" in summary:
                print(f"{function} refused the retry: {summary.get('message')}",
                      file=sys.stderr)
                return EXIT_USAGE if summary["error"] == "BadRetryEvent" else EXIT_PROBLEMS
            tally.add(summary)
            following = summary.get("cursor")
            if not following:
                return tally.finish(dry_run)
            if not summary.get("items"):
                # an invocation that handled nothing would be invoked again for ever
                print(f"{function} stopped before any report: {summary.get('stopped')}",
                      file=sys.stderr)
                return EXIT_PROBLEMS
            cursor = RetryCursor(rule=str(following["rule"]), start=str(following["start"]))
            print(f"continuing from {cursor.start} ({summary.get('stopped')})")
    except (BotoCoreError, ClientError) as exc:
        print(f"cannot invoke the retry in stack {stack}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (ValueError, KeyError, TypeError) as exc:
        print(f"unreadable answer from stack {stack}: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS


def _reconcile(rule: str | None, older_than: int | None) -> int:
    from convbridge.bridge import Bridge
    from convbridge.errors import ConvbridgeError
    from convbridge.http import deadline_from
    from convbridge.reconcile import reconcile

    remaining_ms = _budget()
    try:
        bridge = Bridge.from_env()
        bridge.claims.register_lambda_context(SimpleNamespace(
            get_remaining_time_in_millis=remaining_ms))
        with deadline_from(remaining_ms):
            report = reconcile(bridge, rule_name=rule, older_than=older_than,
                               remaining_ms=remaining_ms)
    except ConvbridgeError as exc:
        print(f"reconcile failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    for item in report.items:
        detail = f" as {item.outcome}" if item.outcome else (
            f" ({item.reason})" if item.reason else "")
        print(f"{item.record_key}: job {item.job_id} {item.status}{detail}")
    print(f"{report.examined} records read, {len(report.items)} overdue"
          + (f"; continues next run for {', '.join(report.resumed_later)}"
             if report.resumed_later else ""))
    return EXIT_PROBLEMS if any(item.status == "error" for item in report.items) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
