"""``lambda-actors dag ...``: DAG files and runs from the command line (SPEC 8 "CLI").

``dag validate FILE`` works offline: it checks the file as the node would
when it is published and prints one line per problem (``file: task: what is
wrong and the fix``). The agents it knows are those of ``--config
agents.yaml`` when given (without it, agent ids are only checked for their
syntax, and the output says so); commands are allowed when ``--node-config``
says ``[dag] allow_commands = true``.

Each ``dag`` command is one entry of :data:`COMMANDS`: a function adding its
arguments and a function running it, returning the exit status.

Exit statuses: 0 the file is valid; 2 it is not (or the file, agents.yaml or
node.toml cannot be used); every problem is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .spec import DagSpecError, KnownAgents, parse_dag

__all__ = ["COMMANDS", "add_arguments", "run"]

EXIT_OK = 0
EXIT_INVALID = 2
#: A DAG file larger than this is refused unread (10,000 tasks fit in a few MB).
MAX_FILE_BYTES = 32 * 1024 * 1024

EPILOG = "Exit status: 0 valid (or done), 2 invalid or unusable input; problems are one line each on stderr."


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the DAG file (TOML, or the same as JSON)")
    parser.add_argument(
        "--config",
        metavar="AGENTS_YAML",
        help="agents.yaml: check that each task's agent is configured (without it, agent ids are not checked)",
    )
    parser.add_argument(
        "--node-config",
        metavar="NODE_TOML",
        help="node.toml: allow command tasks if it says [dag] allow_commands = true (without it, commands are refused)",
    )


def validate(args: argparse.Namespace) -> int:
    """Check a DAG file offline, as the node checks it when published."""
    notes: list[str] = []
    known: KnownAgents | None = None
    if args.config:
        # Imported here: the bot's configuration pulls in PyYAML, which only this option needs.
        from ..bot.config import ConfigError, load_agents_config

        try:
            agents = load_agents_config(args.config)
        except ConfigError as exc:
            return _fail(str(exc).splitlines())
        known = _ConfiguredOrDid(agent.id for agent in agents.agents)
        notes.append("registered agents (DIDs) are checked by the node when the DAG is published")
    else:
        notes.append("agent ids were not checked (no --config agents.yaml given)")
    allow_commands = False
    if args.node_config:
        from ..node.config import NodeConfigError, load_node_config

        try:
            allow_commands = load_node_config(args.node_config, required=True).dag.allow_commands
        except NodeConfigError as exc:
            return _fail(str(exc).splitlines())
    path = Path(args.file)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return _fail([f"{path}: no such file; give the path of the DAG file"])
    except IsADirectoryError:
        return _fail([f"{path}: is a folder; give the path of the DAG file"])
    except OSError as exc:
        return _fail([f"{path}: cannot be read ({exc.strerror}); check the path and its permissions"])
    if len(raw) > MAX_FILE_BYTES:
        return _fail([f"{path}: larger than {MAX_FILE_BYTES} bytes; split the DAG"])
    try:
        spec = parse_dag(raw, known_agents=known, allow_commands=allow_commands, source=str(path))
    except DagSpecError as exc:
        if not args.node_config and any(where.endswith(".command") for where, _ in exc.problems):
            notes.append("command tasks are refused unless --node-config names a node.toml allowing them")
        return _fail(exc.lines() + [f"{path}: note: {note}" for note in notes])
    print(f"{path}: valid: dag {spec.dag_id}, {len(spec.tasks)} task(s), version {spec.version[:12]}")
    for note in notes:
        print(f"{path}: note: {note}")
    return EXIT_OK


class _ConfiguredOrDid(frozenset[str]):
    """The configured agent ids (listed in problems), plus any DID: a DID names
    a registered agent, which only the running node knows (its syntax is
    checked all the same)."""

    def __contains__(self, agent: object) -> bool:
        return super().__contains__(agent) or (isinstance(agent, str) and agent.startswith("did:"))


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_INVALID


#: name -> (help, add its arguments, run it).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "validate": ("check a DAG file offline: every problem, one line each", add_validate_arguments, validate),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    commands = parser.add_subparsers(dest="dag_command", required=True, metavar="DAG_COMMAND")
    for name, (help_text, add, command) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        add(sub)
        sub.set_defaults(dag_run=command)


def run(args: argparse.Namespace) -> int:
    command: Callable[[argparse.Namespace], int] = args.dag_run
    return command(args)
