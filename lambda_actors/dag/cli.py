"""``lambda-actors dag ...``: DAG files and runs from the command line (SPEC 8 "CLI").

``dag validate FILE`` works offline: it checks the file as the node would
when it is published and prints one line per problem (``file: task: what is
wrong and the fix``). The agents it knows are those of ``--config
agents.yaml`` when given (without it, agent ids are only checked for their
syntax, and the output says so); commands are allowed when ``--node-config``
says ``[dag] allow_commands = true``.

Each ``dag`` command is one entry of :data:`COMMANDS`: a function adding its
arguments and a function running it, returning the exit status.

The other commands talk to the node's API (SPEC 8 "API"): ``dag run FILE
[--follow] [--workers node-a,node-b]`` (publish, then confirm; ``--workers``
names the nodes a run is assigned to in mode ``federation``, where it is
required, and is refused in the other modes; ``--follow`` prints each transition from
the run's event stream until it ends), ``dag status RUN_ID``, ``dag list``,
``dag cancel|pause|resume RUN_ID``. ``--api URL`` (default
``http://127.0.0.1:8470``); the token comes from ``LAMBDA_API_TOKEN`` or
``--token-file`` (never from the command line, where ``ps`` would show it).

Exit statuses: 0 done (the file is valid; with ``--follow``, the run
completed); 1 the node refused (no such run, a move the run cannot make) or
the followed run ended failed or cancelled; 2 the file or the arguments are
invalid (or the file, agents.yaml or node.toml cannot be used); 3 no token,
or the node refused it; 4 the node cannot be reached (or answers 5xx).
Every problem is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .spec import DagSpecError, KnownAgents, parse_dag

__all__ = ["COMMANDS", "add_arguments", "run"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2
EXIT_TOKEN = 3
EXIT_UNREACHABLE = 4
DEFAULT_API = "http://127.0.0.1:8470"
TOKEN_ENV = "LAMBDA_API_TOKEN"
#: A DAG file larger than this is refused unread (10,000 tasks fit in a few MB).
MAX_FILE_BYTES = 32 * 1024 * 1024

EPILOG = (
    "Exit status: 0 done (valid; with --follow, completed), 1 refused by the node or the run failed/was cancelled,"
    " 2 invalid or unusable input, 3 no token or token refused, 4 node unreachable; problems are one line each on stderr."
)


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


def _fail(lines: list[str], status: int = EXIT_INVALID) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return status


# -- the commands that talk to the node ------------------------------------------------


class _Failed(Exception):
    """A one-line failure with its exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=DEFAULT_API, metavar="URL", help=f"the node's API (default {DEFAULT_API})")
    parser.add_argument(
        "--token-file", metavar="PATH",
        help=f"a file holding the API token (scope dag); default: the environment variable {TOKEN_ENV}",
    )


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _Failed(EXIT_TOKEN, f"--token-file {args.token_file}: cannot be read ({exc.strerror})") from None
        if not token:
            raise _Failed(EXIT_TOKEN, f"--token-file {args.token_file}: is empty; write the token into it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise _Failed(EXIT_TOKEN, f"no API token: set {TOKEN_ENV} or pass --token-file (a token with scope dag)")
    return token


class _Api:
    """The node's DAG routes over httpx (synchronous: a command line, not the node)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        self.httpx = httpx
        self.base = args.api.rstrip("/")
        self.client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {_token(args)}"}, timeout=30.0
        )

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, f"/api/v1/dag{path}", **kwargs)
        except self.httpx.HTTPError as exc:
            raise _Failed(EXIT_UNREACHABLE, f"{self.base}: cannot reach the node ({type(exc).__name__}); is it running with its API on?") from None
        return self._answer(response)

    def _answer(self, response: Any) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code < 400:
            return body
        message = body.get("message") if isinstance(body, dict) else None
        message = message or f"HTTP {response.status_code}"
        if response.status_code == 422 and isinstance(body.get("problems"), list):
            lines = [f"{p.get('where')}: {p.get('what')}" if p.get("where") else str(p.get("what")) for p in body["problems"]]
            raise _Failed(EXIT_INVALID, "\n".join(lines))
        if response.status_code in (401, 403):
            raise _Failed(EXIT_TOKEN, f"the node refused the token: {message}")
        if response.status_code >= 500:
            raise _Failed(EXIT_UNREACHABLE, f"the node answered {response.status_code}: {message}")
        if response.status_code in (400, 415):
            raise _Failed(EXIT_INVALID, message)
        raise _Failed(EXIT_REFUSED, message)

    def events(self, run_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The run's server-sent events as ``(event, data)``."""
        try:
            with self.client.stream("GET", f"/api/v1/dag/runs/{run_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._answer(response)
                event, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line and data:
                        try:
                            yield event, json.loads(data)
                        except ValueError:
                            pass
                        event, data = "message", ""
        except self.httpx.HTTPError as exc:
            raise _Failed(EXIT_UNREACHABLE, f"{self.base}: the event stream broke ({type(exc).__name__})") from None


def _commanding(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _Failed as exc:
            return _fail(str(exc).splitlines() or [""], exc.status)
        except KeyboardInterrupt:
            return EXIT_OK

    return wrapped


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the DAG file (TOML)")
    parser.add_argument("--follow", action="store_true", help="print every transition until the run ends")
    parser.add_argument(
        "--workers", metavar="NODE,NODE", default="",
        help="mode federation: the nodes the run's tasks are assigned to (comma-separated node ids)",
    )
    add_api_arguments(parser)


def _workers(text: str) -> list[str]:
    workers = [w.strip() for w in text.split(",") if w.strip()]
    if len(set(workers)) != len(workers):
        raise _Failed(EXIT_INVALID, f"--workers: {text!r} names a node twice; name each once")
    return workers


def run_file(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise _Failed(EXIT_INVALID, f"{path}: cannot be read ({exc.strerror}); give the path of the DAG file") from None
    if len(text) > MAX_FILE_BYTES:
        raise _Failed(EXIT_INVALID, f"{path}: larger than {MAX_FILE_BYTES} bytes; split the DAG")
    workers = _workers(getattr(args, "workers", "") or "")
    with _Api(args) as api:
        try:
            published = api.request("POST", "/publish", content=text, headers={"Content-Type": "application/toml"})
        except _Failed as exc:
            if exc.status == EXIT_INVALID:
                raise _Failed(EXIT_INVALID, "\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None
            raise
        body: dict[str, Any] = {"version": published["version"]}
        if workers:
            body["workers"] = workers
        run = api.request("POST", f"/{published['dag_id']}/confirm", json=body)
        run_id = run["run_id"]
        print(f"run {run_id}: dag {published['dag_id']} version {published['version'][:12]}")
        if not args.follow:
            return EXIT_OK
        return _follow(api, run_id)


def _follow(api: _Api, run_id: str) -> int:
    """Follow the run until it ends: a live table on a terminal (rich), one
    line per transition otherwise; the stream is opened again if it breaks."""
    table = _LiveTable(run_id) if sys.stdout.isatty() else None
    try:
        while True:
            try:
                for event, data in api.events(run_id):
                    if table is not None:
                        table.take(event, data)
                        continue
                    line = _transition(event, data)
                    if line:
                        print(line, flush=True)
            except _Failed as exc:
                if exc.status != EXIT_UNREACHABLE:
                    raise
                print(f"{exc}; reconnecting", file=sys.stderr)
                time.sleep(1.0)
            status = api.request("GET", f"/runs/{run_id}")["status"]
            if status in ("completed", "failed", "cancelled"):
                return EXIT_OK if status == "completed" else EXIT_REFUSED
    finally:
        if table is not None:
            table.close()


class _LiveTable:
    """The run's tasks as a rich table, redrawn in place on each transition."""

    def __init__(self, run_id: str) -> None:
        from rich.live import Live

        self.run_id = run_id
        self.status = "?"
        self.progress = ""
        self.tasks: dict[str, tuple[str, str, str]] = {}  #: task -> (status, attempt, reason)
        self.live = Live(self._render(), auto_refresh=False)
        self.live.start()

    def take(self, event: str, data: dict[str, Any]) -> None:
        progress = data.get("progress") or {}
        if progress:
            self.progress = f"{progress.get('completed', 0)}/{progress.get('total', 0)} completed"
        if event == "snapshot":
            self.status = str(data.get("status"))
            for task in data.get("tasks") or []:
                self.tasks[str(task.get("task_id"))] = (
                    str(task.get("status")), str(task.get("attempts")), str(task.get("reason") or "")
                )
        elif event == "cis.dag.task.status":
            old = self.tasks.get(str(data.get("task_id")), ("", "", ""))
            self.tasks[str(data.get("task_id"))] = (str(data.get("status")), str(data.get("attempt")), old[2])
        elif event.startswith("cis.dag.run."):
            self.status = event.rsplit(".", 1)[1]
        elif event == "cis.dag.session.blocked":
            old = self.tasks.get(str(data.get("task_id")), ("blocked", "", ""))
            self.tasks[str(data.get("task_id"))] = (old[0], old[1], f"waits for its owner: {data.get('reason')}")
        self.live.update(self._render(), refresh=True)

    def close(self) -> None:
        self.live.stop()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title=f"run {self.run_id}: {self.status}  {self.progress}".rstrip(), title_justify="left")
        for column in ("task", "status", "attempt", "note"):
            table.add_column(column)
        for task_id, (status, attempt, note) in self.tasks.items():
            table.add_row(task_id, status, attempt, note)
        return table


def _transition(event: str, data: dict[str, Any]) -> str | None:
    when = str(data.get("timestamp", ""))[11:19]
    progress = data.get("progress") or {}
    done = f"{progress.get('completed', 0)}/{progress.get('total', 0)}" if progress else ""
    if event == "snapshot":
        return f"run {data.get('run_id')}: {data.get('status')} {done}".rstrip()
    if event == "cis.dag.task.status":
        return f"{when} task {data.get('task_id')} {data.get('status')} (attempt {data.get('attempt')}) {done}"
    if event.startswith("cis.dag.run."):
        return f"{when} run {event.rsplit('.', 1)[1]} {done}".rstrip()
    if event == "cis.dag.session.blocked":
        return f"{when} task {data.get('task_id')} waits for its owner: {data.get('reason')}"
    if event == "unavailable":
        return f"the node's DAG service is restarting: {data.get('message')}"
    return None


def add_run_id_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID")
    add_api_arguments(parser)


def status(args: argparse.Namespace) -> int:
    with _Api(args) as api:
        run = api.request("GET", f"/runs/{args.run_id}")
    progress = run["progress"]
    print(f"run {run['run_id']}: {run['status']}, dag {run['dag_id']}, {progress['completed']}/{progress['total']} completed, {progress['failed']} failed")
    for task in run["tasks"]:
        reason = f"  ({task['reason']})" if task.get("reason") else ""
        print(f"  {task['task_id']:<24} {task['status']:<10} attempts {task['attempts']}{reason}")
    return EXIT_OK


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", help="only runs with this status")
    parser.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    add_api_arguments(parser)


def listing(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    with _Api(args) as api:
        runs = api.request("GET", "/runs", params=params)["runs"]
    for run in runs:
        progress = run["progress"]
        print(f"{run['run_id']}  {run['status']:<10} {run['dag_id']:<24} {progress['completed']}/{progress['total']}  {run['created_at']}")
    return EXIT_OK


def _mover(name: str) -> Callable[[argparse.Namespace], int]:
    def move(args: argparse.Namespace) -> int:
        with _Api(args) as api:
            run = api.request("POST", f"/runs/{args.run_id}/{name}")
        print(f"run {run['run_id']}: {run['status']}")
        return EXIT_OK

    return move


#: name -> (help, add its arguments, run it).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "validate": ("check a DAG file offline: every problem, one line each", add_validate_arguments, validate),
    "run": ("publish a DAG file and start a run of it (--follow: until it ends)", add_run_arguments, _commanding(run_file)),
    "status": ("a run and each of its tasks", add_run_id_arguments, _commanding(status)),
    "list": ("the node's runs, newest first", add_list_arguments, _commanding(listing)),
    "cancel": ("cancel a run (its running tasks are stopped)", add_run_id_arguments, _commanding(_mover("cancel"))),
    "pause": ("pause a run (running tasks finish; nothing new starts)", add_run_id_arguments, _commanding(_mover("pause"))),
    "resume": ("resume a paused run", add_run_id_arguments, _commanding(_mover("resume"))),
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
