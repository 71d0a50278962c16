"""``lambda-actors token``: a new API token and the line node.toml needs.

The token is printed once, for the client; node.toml keeps only its SHA-256,
so the file can be committed and shown without giving access.
"""

from __future__ import annotations

import argparse

from .config import SCOPES, new_token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="gateway", help="the client's name in node.toml (default: %(default)s)")
    parser.add_argument(
        "--scopes",
        default=",".join(sorted(SCOPES)),
        help="comma-separated scopes to grant, from: " + ", ".join(sorted(SCOPES)) + " (default: all)",
    )


def run(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = sorted(set(scopes) - SCOPES)
    if unknown or not scopes:
        print(f"lambda-actors token: unknown scope(s) {unknown}; choose from {', '.join(sorted(SCOPES))}")
        return 2
    token, digest = new_token()
    print(f"Token for {args.name!r} (give it to the client; it is not stored anywhere):\n\n    {token}\n")
    print("Paste this into config/node.toml:\n")
    print("[[api.clients]]")
    print(f'name = "{args.name}"')
    print(f'token_sha256 = "{digest}"')
    print("scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]")
    return 0
