"""The ``convbridge`` command: local tools around the deployed functions."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

from convbridge import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convbridge")
    parser.add_argument("--version", action="version", version=f"convbridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-rules", help="validate a rules file and list its rules")
    check.add_argument("path")
    retry = commands.add_parser(
        "retry", help="resubmit the sources listed in failure reports (uses the deployed "
        "function's CONVBRIDGE_* environment)")
    retry.add_argument("--rule", help="only this rule's failure reports")
    reconcile = commands.add_parser(
        "reconcile", help="settle jobs whose callbacks never came by asking their provider "
        "(uses the deployed function's CONVBRIDGE_* environment)")
    reconcile.add_argument("--rule", help="only this rule's result records")
    reconcile.add_argument("--older-than", type=int, metavar="SECONDS",
                           help="ask about jobs submitted at least this long ago, instead of "
                                "after each provider's deadline")
    commands.add_parser("routes", help="what each provider is handed per storage: scoped "
                        "grants, or the relay")
    args = parser.parse_args(argv)
    if args.command == "routes":
        from convbridge.routes import capability_table, render

        print(render(capability_table()))
        return 0
    if args.command == "retry":
        return _retry(args.rule)
    if args.command == "reconcile":
        return _reconcile(args.rule, args.older_than)
    if args.command == "check-rules":
        from convbridge.errors import ConfigError
        from convbridge.rules import load_rules

        try:
            rules = load_rules(args.path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        for rule in rules.rules:
            print(f"{rule.name}: {rule.storage}://{rule.location}/{rule.prefix}* "
                  f"-> {rule.output_format} via {rule.provider} into {rule.outputs_prefix}")
        return 0
    return 2


def _budget() -> Callable[[], int]:
    """The remaining time of a command run, counted as a Lambda's would be (15 minutes)."""
    budget_ms = 15 * 60 * 1000
    started = time.monotonic()
    return lambda: budget_ms - int((time.monotonic() - started) * 1000)


def _retry(rule: str | None) -> int:
    from convbridge.bridge import Bridge
    from convbridge.errors import ConvbridgeError
    from convbridge.http import deadline_from
    from convbridge.pipeline import retry_failures

    remaining_ms = _budget()
    try:
        bridge = Bridge.from_env()
        # claims taken by this run expire with it, as they would with a Lambda's
        bridge.claims.register_lambda_context(SimpleNamespace(
            get_remaining_time_in_millis=remaining_ms))
        with deadline_from(remaining_ms):
            submissions = retry_failures(bridge, rule)
    except ConvbridgeError as exc:
        print(f"retry failed: {exc}", file=sys.stderr)
        return 1
    if not submissions:
        print("nothing to retry: no failure reports found")
        return 0
    for item in submissions:
        detail = f" as job {item.job_id}" if item.job_id else (
            f" ({item.reason})" if item.reason else "")
        print(f"{item.ref}: {item.status}{detail}")
    return 0 if all(s.status in {"submitted", "duplicate"} for s in submissions) else 1


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
        return 1
    for item in report.items:
        detail = f" as {item.outcome}" if item.outcome else (
            f" ({item.reason})" if item.reason else "")
        print(f"{item.record_key}: job {item.job_id} {item.status}{detail}")
    print(f"{report.examined} records read, {len(report.items)} overdue"
          + (f"; continues next run for {', '.join(report.resumed_later)}"
             if report.resumed_later else ""))
    return 1 if any(item.status == "error" for item in report.items) else 0


if __name__ == "__main__":
    sys.exit(main())
