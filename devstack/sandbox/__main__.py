"""``python -m devstack.sandbox``: the provider sandbox in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse

from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.sandbox",
                                     description="run the local conversion API sandbox")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", default="sandbox-api-key")
    parser.add_argument("--signing-secret", default="sandbox-signing-secret")
    args = parser.parse_args(argv)
    serve(args.port, args.api_key, args.signing_secret, host=args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
