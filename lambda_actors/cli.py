"""The lambda-actors command: the Matrix bot and its tools.

Each sub-command lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). The
modules are imported only when their sub-command runs, so ``lambda-actors
fake-agent`` does not pay for importing the bot. ``python -m lambda_actors``
is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

DESCRIPTION = "lambda_actors: a fault-tolerant Matrix bot for AI agents, on a supervised Trio actor runtime."
EPILOG = "Run 'lambda-actors COMMAND --help' for a command's options; 'lambda-actors run --help' lists the environment and exit statuses."


#: Top-level modules of the ``bot`` extra: a sub-command missing one of them
#: was installed without it (``pip install lambda_actors`` is the runtime only).
BOT_EXTRA_MODULES = frozenset({"yaml", "httpx", "nio", "trio_websocket", "hypercorn", "starlette", "prometheus_client", "rich"})


def version() -> str:
    try:
        return metadata.version("lambda_actors")
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed.
        return "unknown (not installed)"


SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("lambda_actors.bot.run", "run the Matrix bot"),
    "control": ("lambda_actors.bot.actors.control", "ask a running bot's control socket: actors, kill, stats, deadletters"),
    "fake-agent": ("lambda_actors.agent.fake", "run a fake agent (a real WebSocket server) for demos and tests"),
    "demo": ("lambda_actors.loopback.demo", "a scripted conversation with the bot on loopback (starts and stops its own Synapse)"),
    "chaos": ("lambda_actors.loopback.chaos", "the measured reliability run: users, killed actors, agents and bot, on loopback; reports lost and duplicated messages"),
    "token": ("lambda_actors.node.token", "print a new HTTP API token and the node.toml lines for it"),
    "dag": ("lambda_actors.dag.cli", "DAG runs (SPEC 8): validate a file offline; run, follow, list, pause, resume, cancel through the node's API"),
    "subscribe": ("lambda_actors.dag.subscribe", "watch a DAG status or node heartbeat room: its recent history, then live (table or JSON lines)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lambda-actors", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"lambda-actors {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # Only the chosen sub-command's module is imported; the others are
        # listed in --help with their one-line description alone.
        if argv and argv[0] == name:
            try:
                chosen = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is None or exc.name.split(".")[0] not in BOT_EXTRA_MODULES:
                    raise
                print(
                    f"lambda-actors {name}: needs the bot's dependencies ({exc.name} is not installed); "
                    "install them with: pip install 'lambda_actors[bot]'",
                    file=sys.stderr,
                )
                return 2
            chosen.add_arguments(sub)
    args = parser.parse_args(argv)
    assert chosen is not None  # the sub-command is required, so argparse exited without one
    return int(chosen.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
