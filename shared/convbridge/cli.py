"""The ``convbridge`` command: local tools around the deployed functions."""

from __future__ import annotations

import argparse
import sys


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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
