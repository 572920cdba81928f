"""The ``convbridge`` command: local tools around the deployed functions."""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convbridge")
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox", help="run the local conversion API sandbox")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--api-key", default="sandbox-api-key")
    sandbox.add_argument("--signing-secret", default="sandbox-signing-secret")
    check = commands.add_parser("check-rules", help="validate a rules file and list its rules")
    check.add_argument("path")
    retry = commands.add_parser(
        "retry", help="resubmit the sources listed in failure reports (uses the deployed "
        "function's CONVBRIDGE_* environment)")
    retry.add_argument("--rule", help="only this rule's failure reports")
    commands.add_parser("routes", help="what each provider is handed per storage: scoped "
                        "grants, or the relay")
    args = parser.parse_args(argv)
    if args.command == "routes":
        from convbridge.routes import capability_table, render

        print(render(capability_table()))
        return 0
    if args.command == "retry":
        return _retry(args.rule)
    if args.command == "sandbox":
        try:
            from devstack.sandbox import serve
        except ImportError:
            print("the sandbox needs the dev extras: pip install 'convbridge[dev]'",
                  file=sys.stderr)
            return 2
        print(f"sandbox on http://{args.host}:{args.port}/v2 (Ctrl-C stops)", flush=True)
        serve(args.port, args.api_key, args.signing_secret, host=args.host)
        return 0
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


def _retry(rule: str | None) -> int:
    from convbridge.bridge import Bridge
    from convbridge.errors import ConvbridgeError
    from convbridge.http import deadline_from
    from convbridge.pipeline import retry_failures

    budget_ms = 15 * 60 * 1000
    started = time.monotonic()

    def remaining_ms() -> int:
        return budget_ms - int((time.monotonic() - started) * 1000)

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


if __name__ == "__main__":
    sys.exit(main())
