"""A DAG file: what it may say, checked all at once (SPEC section 8).

:func:`parse_dag` takes the TOML text of a DAG file, or the same document as
JSON (a mapping, as the API receives it), and returns a :class:`DagSpec` or
raises :class:`DagSpecError` holding EVERY problem found, each as ``(where,
what is wrong and the fix)``: ``where`` is a task id (``tasks.plan``), a key
path (``priority``, ``tasks[3].timeout``) or empty for the document itself.
Nothing else escapes it, whatever the input: a publisher gets a list of
fixes, never a traceback.

The parsed spec is canonical: defaults filled in, durations in seconds, and
:meth:`DagSpec.to_mapping` turns it back into a document that parses to the
same spec. Its :attr:`DagSpec.version` is the SHA-256 of that document as
canonical JSON (sorted keys, no spaces), so the same DAG written with its
keys in another order, or with a default spelled out, has the same version.

Cycles are found without recursion (Tarjan's algorithm with an explicit
stack), so a 10,000-task chain is as easy to check as a three-task one, and
each cycle is named (``a -> b -> a``) so it can be broken.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

# The standard library's tomllib, compiled (mypyc): a 10,000-task file reads
# about 2.5 times faster, the same parser and errors otherwise.
import tomli

from ..bot.config import is_matrix_user_id

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_RETRIES",
    "MAX_TASKS",
    "DagSpec",
    "DagSpecError",
    "KnownAgents",
    "Priority",
    "Scope",
    "TaskSpec",
    "parse_dag",
    "parse_duration",
    "parse_scope",
    "placeholders",
    "render_prompt",
]

#: A task's timeout when the file gives none: 30 minutes.
DEFAULT_TIMEOUT_S = 30 * 60
#: The longest timeout a task may ask for (a week): longer is surely a typo.
MAX_TIMEOUT_S = 7 * 24 * 3600
#: Attempts back off 5 s doubling; 10 retries already wait 85 minutes in all.
MAX_RETRIES = 10
#: Tasks in one DAG; the 10,000-task benchmark fits with room to spare.
MAX_TASKS = 20_000
#: The most workers a run may ask for (the node's own limit applies as well).
MAX_WORKERS = 1024
#: A prompt's size in characters; an agent's context is far smaller anyway.
MAX_PROMPT = 256 * 1024

# dag_id and task ids: letters, digits, '-', '_', '.' (SPEC 8), starting with a
# letter or digit so that '.' and '..' can never be a path segment of the API.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCOPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # as agents.yaml's ids
_DID_PREFIX = "did:lambda:agent:"
_DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,7})s)?")
#: ``{{ task.output }}``; anything between the braces is looked at, so a typo
#: is reported rather than sent to the agent as literal text.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PLACEHOLDER_FIELDS = ("output",)

_TOP_KEYS = ("dag_id", "scope", "reuse_worker", "priority", "owner", "max_workers", "tasks")
_TASK_KEYS = ("id", "deps", "agent", "command", "prompt", "workdir", "timeout", "retries")
_TOP_KEY_SET = frozenset(_TOP_KEYS)
_TASK_KEY_SET = frozenset(_TASK_KEYS)

#: A known-agents check: the ids and DIDs, or a function answering for one.
KnownAgents = Collection[str] | Callable[[str], bool]


class Priority(enum.StrEnum):
    """A run's priority: when the node's slots are full, higher runs start first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Larger is more urgent (critical 3 ... low 0)."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class ScopeKind(enum.StrEnum):
    GLOBAL = "global"
    PROJECT = "project"
    USER = "user"
    TYPE = "type"


@dataclass(frozen=True)
class Scope:
    """Whose worker runs the DAG: ``global`` or ``project:<id>``, ``user:<id>``, ``type:<name>``."""

    kind: ScopeKind
    name: str | None = None  #: None exactly for ``global``

    def __str__(self) -> str:
        return str(self.kind) if self.name is None else f"{self.kind}:{self.name}"

    @property
    def worker_name(self) -> str:
        """The name of the scope's worker supervisor under ``node/dag`` (SPEC 8 "Workers")."""
        return "worker-global" if self.name is None else f"worker-{self.kind}-{self.name}"


GLOBAL_SCOPE = Scope(ScopeKind.GLOBAL)


def parse_scope(text: str) -> Scope:
    """``global`` | ``project:<id>`` | ``user:<id>`` | ``type:<name>``; ValueError with the fix."""
    if text == "global":
        return GLOBAL_SCOPE
    kind, sep, name = text.partition(":")
    kinds = [k.value for k in ScopeKind if k is not ScopeKind.GLOBAL]
    if not sep or kind not in kinds:
        raise ValueError(f"{text!r} is not a scope; write 'global' or one of {', '.join(k + ':<name>' for k in kinds)}")
    if not _SCOPE_NAME.fullmatch(name):
        raise ValueError(
            f"{text!r}: the name after '{kind}:' must be 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return Scope(ScopeKind(kind), name)


@dataclass(frozen=True)
class TaskSpec:
    """One task: an agent's (``agent`` + ``prompt``) or a local command's (``command``)."""

    id: str
    deps: tuple[str, ...] = ()
    agent: str | None = None  #: a configured agent id or a registered agent's DID
    command: tuple[str, ...] | None = None  #: argv, run without a shell
    prompt: str = ""
    workdir: str | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    retries: int = 0

    @property
    def is_command(self) -> bool:
        return self.command is not None

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "deps": list(self.deps)}
        if self.command is not None:
            out["command"] = list(self.command)
        else:
            out["agent"] = self.agent
            out["prompt"] = self.prompt
        if self.workdir is not None:
            out["workdir"] = self.workdir
        out["timeout"] = self.timeout_s
        out["retries"] = self.retries
        return out


@dataclass(frozen=True)
class DagSpec:
    """A checked DAG. Tasks keep the file's order; ``version`` identifies the content."""

    dag_id: str
    tasks: tuple[TaskSpec, ...]
    scope: Scope = GLOBAL_SCOPE
    reuse_worker: bool = False
    priority: Priority = Priority.NORMAL
    owner: str | None = None  #: a Matrix user id; asked when a task is blocked
    max_workers: int | None = None  #: None: only the node's limit applies

    @functools.cached_property
    def version(self) -> str:
        """SHA-256 (hex) of :meth:`to_mapping` as canonical JSON: the same content, the same version."""
        return _version(self.to_mapping())

    def task(self, task_id: str) -> TaskSpec:
        """The task with that id (KeyError if none)."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def to_mapping(self) -> dict[str, Any]:
        """The spec as a document (JSON- and TOML-ready) that :func:`parse_dag` reads back unchanged."""
        out: dict[str, Any] = {
            "dag_id": self.dag_id,
            "scope": str(self.scope),
            "reuse_worker": self.reuse_worker,
            "priority": str(self.priority),
        }
        if self.owner is not None:
            out["owner"] = self.owner
        if self.max_workers is not None:
            out["max_workers"] = self.max_workers
        out["tasks"] = [task.to_mapping() for task in self.tasks]
        return out


class DagSpecError(Exception):
    """The DAG cannot be used; ``problems`` lists every ``(where, what is wrong and the fix)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem: ``source: where: what``."""
        return [f"{self.source}: {where}: {what}" if where else f"{self.source}: {what}" for where, what in self.problems]


def _version(mapping: dict[str, Any]) -> str:
    canonical = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def parse_duration(value: object) -> int:
    """``"10m"``, ``"30s"``, ``"1h30m"`` or whole seconds -> seconds; ValueError with the fix."""
    hint = "write a duration such as '30s', '10m' or '1h30m' (or whole seconds)"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a duration; {hint}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.fullmatch(value.strip())
        if not value.strip() or match is None:
            raise ValueError(f"{_short(value)} is not a duration; {hint}")
        hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"must be longer than zero; {hint}")
    if seconds > MAX_TIMEOUT_S:
        raise ValueError(f"is longer than a week ({MAX_TIMEOUT_S} s); give a shorter timeout")
    return seconds


def placeholders(prompt: str) -> Iterator[tuple[str, str | None]]:
    """Each ``{{ ... }}`` in ``prompt`` as ``(its text, the upstream task id or None if malformed)``."""
    for match in _PLACEHOLDER.finditer(prompt):
        inner = match.group(1).strip()
        task_id, dot, name = inner.rpartition(".")
        yield match.group(0), (task_id if dot and task_id and name in _PLACEHOLDER_FIELDS else None)


def render_prompt(task: TaskSpec, outputs: Mapping[str, str]) -> str:
    """The task's prompt with each ``{{ <task>.output }}`` replaced by that task's output.

    The spec was checked, so every placeholder names a dependency; one whose
    output is missing (never, when the scheduler started the task) becomes
    the empty string rather than leaking the template to the agent.
    """

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        task_id, _, _ = inner.rpartition(".")
        return outputs.get(task_id, "")

    return _PLACEHOLDER.sub(substitute, task.prompt)


def parse_dag(
    document: str | bytes | Mapping[str, Any],
    *,
    known_agents: KnownAgents | None = None,
    allow_commands: bool = False,
    source: str = "<dag>",
) -> DagSpec:
    """Check a DAG document; :class:`DagSpecError` lists every problem at once.

    ``document`` is the TOML text (JSON text is accepted too) or the parsed
    JSON mapping. ``known_agents`` is None to leave agent ids unchecked (only
    their syntax is), else the ids and DIDs the node knows or a function
    answering for one. ``allow_commands`` is the node's ``[dag] allow_commands``.
    """
    problems: list[tuple[str, str]] = []
    try:
        data = _load(document, problems)
        spec = None if data is None else _Checker(problems, known_agents, allow_commands).dag(data)
    except RecursionError:
        # Only reachable through a pathologically nested document (tomli and
        # json recurse): a fact about the input, reported as one.
        problems.append(("", "the document is nested too deeply to read; a DAG file is flat tables and lists"))
        spec = None
    if problems or spec is None:
        raise DagSpecError(source, problems or [("", "not a DAG document")])
    return spec


def _load(document: object, problems: list[tuple[str, str]]) -> Mapping[str, Any] | None:
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.append(("", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"))
            return None
    if isinstance(document, str):
        text = document.lstrip("\ufeff")
        if text.lstrip().startswith("{"):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                problems.append(("", f"JSON syntax error: {exc}; fix the syntax there"))
                return None
        else:
            try:
                loaded = tomli.loads(text)
            except tomli.TOMLDecodeError as exc:
                problems.append(("", f"TOML syntax error: {exc}; fix the syntax there"))
                return None
        document = loaded
    if not isinstance(document, Mapping):
        problems.append(("", "must be a table of keys (dag_id, tasks, ...), as TOML or a JSON object"))
        return None
    return document


class _Checker:
    """Walks a document, collecting problems; returns a spec only when there are none."""

    def __init__(self, problems: list[tuple[str, str]], known_agents: KnownAgents | None, allow_commands: bool) -> None:
        self.problems = problems
        self.known_agents = known_agents
        self.allow_commands = allow_commands
        self.durations: dict[str, int] = {}

    def fail(self, where: str, what: str) -> None:
        self.problems.append((where, what))

    def dag(self, data: Mapping[str, Any]) -> DagSpec | None:
        self.unknown_keys(data, "", _TOP_KEYS, _TOP_KEY_SET)
        dag_id = data.get("dag_id")
        if dag_id is None:
            self.fail("dag_id", 'missing; name the DAG, e.g. dag_id = "refactor-project"')
        elif not isinstance(dag_id, str) or not _ID.fullmatch(dag_id):
            self.fail("dag_id", "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        scope = GLOBAL_SCOPE
        if "scope" in data:
            if not isinstance(data["scope"], str):
                self.fail("scope", "must be a string: 'global', 'project:<id>', 'user:<id>' or 'type:<name>'")
            else:
                try:
                    scope = parse_scope(data["scope"])
                except ValueError as exc:
                    self.fail("scope", str(exc))
        reuse_worker = data.get("reuse_worker", False)
        if not isinstance(reuse_worker, bool):
            self.fail("reuse_worker", "must be true or false")
            reuse_worker = False
        priority = Priority.NORMAL
        if "priority" in data:
            try:
                priority = Priority(data["priority"])
            except (ValueError, TypeError):
                self.fail("priority", f"must be one of {', '.join(repr(str(p)) for p in Priority)}")
        owner = data.get("owner")
        if owner is not None and not is_matrix_user_id(owner):
            self.fail("owner", "must be a Matrix user id such as '@alice:example.org'")
            owner = None
        max_workers = data.get("max_workers")
        if max_workers is not None and not self.whole(max_workers, 1, MAX_WORKERS):
            self.fail("max_workers", f"must be a whole number from 1 to {MAX_WORKERS}, or left out for the node's limit")
            max_workers = None
        tasks = self.tasks(data.get("tasks"))
        if self.problems or tasks is None or not isinstance(dag_id, str):
            return None
        return DagSpec(
            dag_id=dag_id,
            tasks=tasks,
            scope=scope,
            reuse_worker=reuse_worker,
            priority=priority,
            owner=owner,
            max_workers=max_workers,
        )

    def tasks(self, entries: object) -> tuple[TaskSpec, ...] | None:
        if entries is None:
            self.fail("tasks", "missing; add at least one [[tasks]] table")
            return None
        if not isinstance(entries, list) or not entries:
            self.fail("tasks", "must be a non-empty list of task tables ([[tasks]])")
            return None
        if len(entries) > MAX_TASKS:
            self.fail("tasks", f"{len(entries)} tasks; a DAG holds at most {MAX_TASKS}, split it")
            return None
        # Ids first, so a dep can be checked whether it is written before or after its task.
        ids: dict[str, int] = {}
        names: list[str] = []  # how each entry is named in problems
        for index, entry in enumerate(entries):
            raw = entry.get("id") if isinstance(entry, Mapping) else None
            if isinstance(raw, str) and _ID.fullmatch(raw):
                if raw in ids:
                    self.fail(f"tasks.{raw}", f"the id is used by tasks {ids[raw]} and {index}; give each task its own id")
                    names.append(f"tasks[{index}]")
                else:
                    ids[raw] = index
                    names.append(f"tasks.{raw}")
            else:
                names.append(f"tasks[{index}]")
        built: list[TaskSpec] = []
        for index, entry in enumerate(entries):
            task = self.task(entry, names[index], ids)
            if task is not None:
                built.append(task)
        # Cycles among the tasks whose id and deps could be read, even when
        # other problems were found: every problem at once.
        graph: dict[str, tuple[str, ...]] = {}
        for task_id, index in ids.items():
            deps = entries[index].get("deps", [])
            if isinstance(deps, list):
                graph[task_id] = tuple(dict.fromkeys(d for d in deps if isinstance(d, str) and d in ids))
            else:
                graph[task_id] = ()
        for cycle in _find_cycles(graph):
            ring = cycle + [cycle[0]]
            if len(ring) > 12:  # a long cycle is named by its ends, not listed whole
                ring = ring[:6] + [f"... ({len(cycle)} tasks) ..."] + ring[-3:]
            shown = " -> ".join(ring)
            self.fail(f"tasks.{cycle[0]}", f"dependency cycle {shown} (each depends on the next); remove one of these deps")
        return tuple(built) if len(built) == len(entries) else None

    def task(self, entry: object, where: str, ids: Mapping[str, int]) -> TaskSpec | None:
        if not isinstance(entry, Mapping):
            self.fail(where, "must be a table with id, and agent and prompt, or command")
            return None
        before = len(self.problems)
        self.unknown_keys(entry, where, _TASK_KEYS, _TASK_KEY_SET)
        task_id = entry.get("id")
        if task_id is None:
            self.fail(f"{where}.id", "missing; give the task an id (letters, digits, '-', '_', '.')")
        elif not isinstance(task_id, str) or not _ID.fullmatch(task_id):
            self.fail(f"{where}.id", "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        deps = self.deps(entry.get("deps", []), where, task_id, ids)
        has_agent, has_command = "agent" in entry, "command" in entry
        agent = command = None
        prompt = ""
        if has_agent and has_command:
            self.fail(where, "has both agent and command; a task is one or the other, remove one")
        elif not has_agent and not has_command:
            self.fail(where, "has neither agent nor command; give it agent (with prompt) or command")
        elif has_agent:
            agent = self.agent(entry["agent"], where)
            prompt = self.prompt(entry.get("prompt"), where, deps, ids)
        else:
            command = self.command(entry["command"], where)
            if "prompt" in entry:
                self.fail(f"{where}.prompt", "a command task takes no prompt; remove it, or make it an agent task")
        workdir = entry.get("workdir")
        if workdir is not None and (not self.text(workdir) or not workdir.startswith("/")):
            self.fail(f"{where}.workdir", "must be an absolute path such as '/srv/proj'")
        elif workdir is not None and not has_command:
            self.fail(f"{where}.workdir", "only a command task runs in a workdir; remove it")
        timeout_s = DEFAULT_TIMEOUT_S
        if "timeout" in entry:
            timeout = entry["timeout"]
            # Files repeat a few durations thousands of times: each is read once.
            known = self.durations.get(timeout) if isinstance(timeout, str) else None
            if known is not None:
                timeout_s = known
            else:
                try:
                    timeout_s = parse_duration(timeout)
                except ValueError as exc:
                    self.fail(f"{where}.timeout", str(exc))
                else:
                    if isinstance(timeout, str):
                        self.durations[timeout] = timeout_s
        retries = entry.get("retries", 0)
        if not self.whole(retries, 0, MAX_RETRIES):
            self.fail(f"{where}.retries", f"must be a whole number from 0 to {MAX_RETRIES}")
        if len(self.problems) > before or not isinstance(task_id, str):
            return None
        return TaskSpec(
            id=task_id,
            deps=deps,
            agent=agent,
            command=command,
            prompt=prompt,
            workdir=workdir,
            timeout_s=timeout_s,
            retries=retries,
        )

    def deps(self, value: object, where: str, task_id: object, ids: Mapping[str, int]) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            self.fail(f"{where}.deps", 'must be a list of task ids, e.g. deps = ["analyze"]')
            return ()
        seen: set[str] = set()
        for dep in value:
            if dep in seen:
                self.fail(f"{where}.deps", f"lists {_short(dep)} twice; list each dependency once")
            elif dep not in ids:
                self.fail(f"{where}.deps", f"{_short(dep)} is not a task of this DAG; {_suggest(dep, ids)}")
            seen.add(dep)
        return tuple(dict.fromkeys(value))

    def agent(self, value: object, where: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.fail(f"{where}.agent", "must be an agent id from agents.yaml or a registered agent's DID")
            return None
        if value.startswith("did:"):
            rest = value.removeprefix(_DID_PREFIX)
            if not value.startswith(_DID_PREFIX) or not _is_uuid(rest):
                self.fail(f"{where}.agent", f"{_short(value)} is not an agent DID; write {_DID_PREFIX}<uuid>")
                return None
        elif not _AGENT_ID.fullmatch(value):
            self.fail(f"{where}.agent", f"{_short(value)} is not an agent id; use an id from agents.yaml")
            return None
        known = self.known_agents
        if known is None:
            return value
        try:
            found = known(value) if callable(known) else value in known
        except Exception as exc:  # the node's registry answering; its failure is reported, not raised
            self.fail(f"{where}.agent", f"{_short(value)} could not be checked ({type(exc).__name__}); try again")
            return None
        if not found:
            listing = "" if callable(known) else f" (known: {_listing(known)})"
            self.fail(
                f"{where}.agent",
                f"unknown agent {_short(value)}{listing}; use a configured agent id or register the agent",
            )
            return None
        return value

    def prompt(self, value: object, where: str, deps: tuple[str, ...], ids: Mapping[str, int]) -> str:
        if value is None:
            self.fail(f"{where}.prompt", "missing; an agent task needs the prompt to send")
            return ""
        if not self.text(value) or not value.strip():
            self.fail(f"{where}.prompt", "must be non-empty text")
            return ""
        if len(value) > MAX_PROMPT:
            self.fail(f"{where}.prompt", f"is {len(value)} characters; keep it under {MAX_PROMPT}")
        for text, upstream in placeholders(value):
            if upstream is None:
                self.fail(f"{where}.prompt", f"{_short(text)} is not a placeholder; write {{{{ <task id>.output }}}}")
            elif upstream not in ids:
                self.fail(
                    f"{where}.prompt",
                    f"{_short(text)} names {_short(upstream)}, which is no task of this DAG; name one of this task's deps",
                )
            elif upstream not in deps:
                self.fail(
                    f"{where}.prompt",
                    f"{_short(text)} names {_short(upstream)}, which is not a dependency; add it to deps",
                )
        return value

    def command(self, value: object, where: str) -> tuple[str, ...] | None:
        if not self.allow_commands:
            self.fail(
                f"{where}.command",
                "this node does not run commands ([dag] allow_commands = false); use an agent task, "
                "or set allow_commands = true in node.toml",
            )
        if (
            not isinstance(value, list)
            or not value
            or not all(self.text(arg) and "\0" not in arg for arg in value)
            or not value[0]
        ):
            self.fail(f"{where}.command", 'must be a non-empty list of strings (the program and its arguments), e.g. ["pytest", "-q"]')
            return None
        return tuple(value)

    def unknown_keys(
        self, table: Mapping[Any, Any], where: str, allowed: tuple[str, ...], allowed_set: frozenset[str]
    ) -> None:
        if allowed_set.issuperset(table):
            return
        for key in table:
            if key not in allowed_set:
                path = f"{where}.{key}" if where else str(key)
                self.fail(path, f"unknown key; the keys here are {', '.join(allowed)}")

    @staticmethod
    def whole(value: object, low: int, high: int) -> TypeGuard[int]:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    @staticmethod
    def text(value: object) -> TypeGuard[str]:
        """A string that can travel as UTF-8 (no lone surrogates from JSON's escapes)."""
        if not isinstance(value, str):
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True


def _find_cycles(deps: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in ``deps``' order.

    Tarjan's algorithm driven by an explicit stack: a chain of any length
    never touches Python's recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in deps:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, i = work[-1]
            children = deps[node]
            if i < len(children):
                work[-1] = (node, i + 1)
                child = children[i]
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in deps[node]:
                    components.append(component)
    order = {task_id: n for n, task_id in enumerate(deps)}
    cycles = [_cycle_in(set(c), min(c, key=order.__getitem__), deps) for c in components]
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def _cycle_in(members: set[str], start: str, deps: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A shortest cycle through ``start`` inside one strongly connected component (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for dep in deps[node]:
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if dep in members and dep not in came_from:
                    came_from[dep] = node
                    following.append(dep)
        frontier = following
    return [start]  # unreachable: every member of a component lies on a cycle through the others


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def _short(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[: limit - 1] + "…"
    return repr(text)


def _listing(names: Collection[str], limit: int = 10) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "") if ordered else "none"


def _suggest(dep: str, ids: Mapping[str, int]) -> str:
    close = [i for i in ids if i.lower() == dep.lower()]
    return f"did you mean {close[0]!r}?" if close else "use the id of a task in this file"
