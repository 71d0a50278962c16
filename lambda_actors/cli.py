"""The ``lambda-actors`` command.

Each sub-command lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). The
modules are imported only when their sub-command runs, so ``lambda-actors
fake-agent`` does not pay for importing the bot.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("lambda_actors.bot.run", "run the Matrix bot"),
    "fake-agent": ("lambda_actors.agent.fake", "run a fake agent (a real WebSocket server) for demos and tests"),
    "demo": ("lambda_actors.loopback.demo", "a scripted conversation with the bot on loopback (starts and stops its own Synapse)"),
    "chaos": ("lambda_actors.loopback.chaos", "the measured reliability run: users, killed actors, agents and bot, on loopback; reports lost and duplicated messages"),
    "token": ("lambda_actors.node.token", "print a new HTTP API token and the node.toml lines for it"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lambda-actors", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # Only the chosen sub-command's module is imported; the others are
        # listed in --help with their one-line description alone.
        if argv and argv[0] == name:
            chosen = importlib.import_module(module_name)
            chosen.add_arguments(sub)
    args = parser.parse_args(argv)
    return int(chosen.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
