"""The bot's configuration: ``agents.yaml`` and the Matrix environment.

Two sources, on purpose. ``agents.yaml`` says who talks to which agent and
where each agent lives; it is safe to commit, so it must never hold a secret,
and any key that looks like one is refused. The Matrix credentials come from
the environment (or a file named by it) and are wrapped in :class:`Secret`,
whose ``repr`` and ``str`` never show the value, so a settings object can be
logged without leaking anything.

A broken configuration is found at start-up, not when the first user writes:
the loader reports every mistake in the file at once, in one
:class:`ConfigError` with a line per mistake naming the file, the entry
(``agents[1].base_url``, ``user_agents."@bob:example.org"``), what is wrong
and how to fix it. Only a file that cannot be parsed at all (YAML syntax)
stops at its first error. Nothing else escapes the loader, whatever the
file holds.

The optional ``limits:`` section sets fields of
:class:`~lambda_actors.bot.limits.Limits` (positive whole numbers).
"""

from __future__ import annotations

import hmac
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..agent.protocol import check_base_url
from .limits import Limits

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "AgentConfig",
    "AgentsConfig",
    "ConfigError",
    "MatrixSettings",
    "UnreadableConfig",
    "Secret",
    "check_agent_entry",
    "is_matrix_user_id",
    "load_agents_config",
    "parse_agents_config",
]

#: Largest file an agent may send to its user unless its entry says otherwise.
#: Synapse's default upload limit is 50 MiB; larger files would fail there.
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024

# A configuration file is a few kilobytes; anything much larger is a mistake
# (the wrong file), and refusing it keeps the loader's cost bounded.
_MAX_CONFIG_BYTES = 1024 * 1024

_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# The Matrix user id grammar (spec "Identifier grammar"), including the
# historical localparts still found on older servers: any printable ASCII but
# ':'. The server name is a DNS name, IPv4 or a bracketed IPv6, with a port.
_USER_ID = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+"
    r":(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
# Names a secret tends to have. Compared after lower-casing and turning '-'
# into '_', so "Access-Token" and "api_key" are caught as well.
_SECRET_KEY = re.compile(r"(^|_)(password|passwd|token|access_token|secret|api_key|apikey)s?($|_)")

_AGENT_REQUIRED = ("id", "base_url", "workspace_path")
_AGENT_OPTIONAL = ("label", "max_file_bytes")
_TOP_OPTIONAL = ("user_agents", "default_agent", "limits")

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


class ConfigError(Exception):
    """The configuration is unusable; the message says where and how to fix it.

    It is the only exception the loaders raise, so ``lambda-actors run`` can
    print it and exit 2 instead of showing a traceback. ``problems`` holds
    every mistake found, one line each (file, entry, what is wrong, the
    fix); the message is those lines.
    """

    def __init__(self, message: str, problems: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else (message,)

    @classmethod
    def of(cls, problems: list[str] | tuple[str, ...]) -> ConfigError:
        return cls("\n".join(problems), tuple(problems))


class UnreadableConfig(ConfigError):
    """A file the configuration names cannot be read at all (missing, a
    folder, no permission): a problem of the host, not of the file's
    content, so ``lambda-actors run`` exits 5 for it rather than 2."""


class Secret:
    """A credential that never shows itself in ``repr``, ``str`` or logs.

    Call :meth:`reveal` at the one place the value is actually needed (the
    login request), so every other use of the settings is safe by default.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> Any:
        # Pickling would write the value somewhere unexpected; nobody needs it.
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class AgentConfig:
    """One agent: where to reach it and where its workspace is on this host.

    ``workspace_path`` is the agent's ``/workspace`` as the bot sees it;
    incoming files are written below it and files the agent sends must
    resolve inside it. It is always absolute here: a relative path in the
    file is resolved against the folder holding the configuration file.
    """

    id: str
    label: str
    base_url: str
    workspace_path: Path
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


@dataclass(frozen=True)
class AgentsConfig:
    """Who talks to which agent, and the agents themselves."""

    agents: tuple[AgentConfig, ...]
    user_agents: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default_agent: str | None = None
    source: str = "<agents config>"
    limits: Limits = Limits()

    def agent(self, agent_id: str) -> AgentConfig:
        """The agent with this id; ``KeyError`` if there is none."""
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise KeyError(agent_id)

    def agent_for(self, user_id: str) -> AgentConfig | None:
        """The agent serving this Matrix user, or None if the user is refused.

        A configured user gets their agent; anyone else gets
        ``default_agent``, which is None unless the operator chose to serve
        unknown users.
        """
        agent_id = self.user_agents.get(user_id, self.default_agent)
        return None if agent_id is None else self.agent(agent_id)


def is_matrix_user_id(value: object) -> bool:
    """True for a well-formed Matrix user id such as ``@alice:example.org``."""
    return (
        isinstance(value, str)
        and len(value.encode("utf-8", "replace")) <= 255
        and _USER_ID.fullmatch(value) is not None
    )


def load_agents_config(path: str | os.PathLike[str]) -> AgentsConfig:
    """Read and validate an ``agents.yaml`` file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UnreadableConfig(f"{path}: file not found; pass the path of your agents.yaml with --config") from None
    except IsADirectoryError:
        raise UnreadableConfig(f"{path}: is a folder, not a file; pass the path of your agents.yaml") from None
    except OSError as exc:
        raise UnreadableConfig(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes; is this really agents.yaml?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    return parse_agents_config(text, source=str(path), base_dir=path.absolute().parent)


def parse_agents_config(text: str, *, source: str = "<agents config>", base_dir: Path | None = None) -> AgentsConfig:
    """Validate ``agents.yaml`` content; ``source`` names it in error messages.

    Relative workspace paths are resolved against ``base_dir`` (the config
    file's folder), or the current directory when it is None.
    """
    data = _load_yaml(text, source)
    return _Validator(source, base_dir or Path.cwd()).config(data)


def check_agent_entry(data: Any) -> AgentConfig | list[tuple[str, str]]:
    """One ``agents:`` entry checked exactly as the loader checks it (the
    node's registration API takes agents this way, SPEC 7.2): the agent, or
    every problem as ``(key, what is wrong and the fix)``. A relative
    ``workspace_path`` has no file to be relative to here: give it absolute."""
    found: list[tuple[str, str]] = []

    class _Collect(_Validator):
        def fail(self, where: str, problem: str) -> None:
            found.append((where.lstrip("."), problem))

    _, agent = _Collect("<entry>", Path("/")).agent(data, "")
    if found or agent is None:
        return found or [("", "is not a usable agent entry")]
    return agent


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping.

    Plain PyYAML keeps the last value silently, so a user listed twice in
    ``user_agents`` would quietly be served by one of the two agents.
    """


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"the key {_short.repr(key)} appears twice; keep only one",
                key_node.start_mark,
            )
        seen[key] = None
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, source: str) -> Any:
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty; it needs at least an 'agents' list (see 'agents.yaml' in the README)")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if "'@'" in problem:
            # The usual cause: an unquoted Matrix id as a key or value ('@'
            # is reserved in YAML and cannot start a plain value).
            raise ConfigError(
                f"{source}: {where}YAML syntax error: {problem}; a Matrix user id must be quoted, "
                'e.g. "@alice:example.org": agent-0'
            ) from None
        raise ConfigError(f"{source}: {where}YAML syntax error: {problem}; fix the YAML syntax there") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}; fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a configuration file") from None
    except (ValueError, OverflowError) as exc:
        # PyYAML lets a few malformed scalars through as plain Python errors,
        # e.g. a timestamp like 2001-13-45 (month 13).
        raise ConfigError(f"{source}: a value cannot be read ({exc}); quote it to make it a string") from None


class _Validator:
    """Walks the loaded YAML, knowing where it is, and collects every problem.

    Each check records what is wrong with its entry and goes on, so one run
    reports every mistake in the file (an operator fixes them all at once).
    A part that is wrong is left out of the result; checks that depend on
    it (an agent id named in ``user_agents``) are skipped rather than
    reported a second time.
    """

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    def fail(self, where: str, problem: str) -> None:
        self.problems.append(f"{self.source}: {where}: {problem}")

    def config(self, data: Any) -> AgentsConfig:
        if data is None:
            raise ConfigError(f"{self.source}: the file holds no settings; it needs at least an 'agents' list")
        if not isinstance(data, dict):
            raise ConfigError(
                f"{self.source}: the top level must be a mapping with 'agents', 'user_agents' and "
                f"'default_agent', not {_kind(data)}"
            )
        self.refuse_secrets(data, "")
        self.check_keys(data, "", required=("agents",), optional=_TOP_OPTIONAL)
        # None when the agents list itself is unusable: then no agent id can
        # be checked, and saying "unknown agent" for each would be noise.
        ids: set[str] | None = None
        agents: tuple[AgentConfig, ...] = ()
        if "agents" in data:
            agents, ids = self.agents(data["agents"])
        user_agents = self.user_agents(data.get("user_agents"), ids)
        default_agent = self.default_agent(data.get("default_agent"), ids)
        limits = self.limits(data.get("limits"))
        if self.problems:
            raise ConfigError.of(self.problems)
        return AgentsConfig(
            agents=agents,
            user_agents=MappingProxyType(user_agents),
            default_agent=default_agent,
            source=self.source,
            limits=limits,
        )

    def refuse_secrets(self, node: Any, where: str) -> None:
        # Walks the whole document: a secret anywhere in a committed file is a
        # leak, even under a key we would otherwise reject as unknown. YAML
        # aliases can make the document a graph (even a cyclic one), hence
        # the set of visited nodes.
        seen: set[int] = set()
        stack = [(node, where)]
        found: list[str] = []
        while stack:
            item, path = stack.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                for key, value in item.items():
                    entry = _entry(path, key)
                    if _looks_secret(key):
                        found.append(entry)
                    stack.append((value, entry))
            elif isinstance(item, list):
                stack.extend((value, f"{path}[{i}]") for i, value in enumerate(item))
        for entry in sorted(found):
            self.fail(
                entry,
                "looks like a secret; secrets come from the environment "
                "(MATRIX_PASSWORD or MATRIX_ACCESS_TOKEN, or their _FILE variants), "
                "never from this file: remove it",
            )

    def check_keys(self, data: dict[Any, Any], where: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        """Report unknown keys (usually typos) and missing ones; ``where`` is "" at the top."""
        allowed = set(required) | set(optional)
        for key in data:
            # A secret-looking key is already reported as such.
            if key not in allowed and not _looks_secret(key):
                self.fail(_entry(where, key), f"unknown key; allowed keys are {_listing(allowed)}")
        for key in required:
            if key not in data:
                self.fail(where or "top level", f"missing key {key!r}; add it")

    def agents(self, data: Any) -> tuple[tuple[AgentConfig, ...], set[str] | None]:
        """The valid agents, and every well-formed id (also of agents with other mistakes)."""
        if not isinstance(data, list) or not data:
            self.fail("agents", f"must be a non-empty list of agents, not {_kind(data)}; see 'agents.yaml' in the README")
            return (), None
        agents: list[AgentConfig] = []
        first_seen: dict[str, int] = {}
        for i, item in enumerate(data):
            agent_id, agent = self.agent(item, f"agents[{i}]")
            if agent_id is None:
                continue
            if agent_id in first_seen:
                self.fail(
                    f"agents[{i}].id",
                    f"duplicate agent id {agent_id!r} (also agents[{first_seen[agent_id]}]); give every agent its own id",
                )
                continue
            first_seen[agent_id] = i
            if agent is not None:
                agents.append(agent)
        return tuple(agents), set(first_seen)

    def agent(self, data: Any, where: str) -> tuple[str | None, AgentConfig | None]:
        if not isinstance(data, dict):
            self.fail(where, f"must be a mapping with {_listing(_AGENT_REQUIRED)}, not {_kind(data)}")
            return None, None
        before = len(self.problems)
        self.check_keys(data, where, required=_AGENT_REQUIRED, optional=_AGENT_OPTIONAL)
        agent_id = data.get("id")
        if "id" in data and (not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id)):
            self.fail(
                f"{where}.id",
                f"{_short.repr(agent_id)} is not a valid agent id; use letters, digits, '.', '_', '-' or ':' "
                "(starting with a letter or digit, at most 128 characters), e.g. agent-0",
            )
            agent_id = None
        label = data.get("label", agent_id)
        if "label" in data and (not isinstance(label, str) or not label.strip() or len(label) > 200):
            self.fail(f"{where}.label", f"must be a non-empty string of at most 200 characters, not {_kind(label)}")
        base_url = self.base_url(data["base_url"], f"{where}.base_url") if "base_url" in data else None
        workspace = self.workspace_path(data["workspace_path"], f"{where}.workspace_path") if "workspace_path" in data else None
        max_file_bytes = self.max_file_bytes(data.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES), f"{where}.max_file_bytes")
        if len(self.problems) > before or agent_id is None or base_url is None or workspace is None or max_file_bytes is None:
            return agent_id, None
        return agent_id, AgentConfig(
            id=agent_id, label=str(label).strip(), base_url=base_url, workspace_path=workspace, max_file_bytes=max_file_bytes
        )

    def base_url(self, value: Any, where: str) -> str | None:
        example = "e.g. http://agents.internal:7000/agent_0/"
        if not isinstance(value, str):
            self.fail(where, f"must be a URL string, not {_kind(value)}; {example}")
            return None
        try:
            # The one agent-URL validation, shared with the socket URL builder.
            return check_base_url(value)
        except ValueError as exc:
            self.fail(where, f"{exc}; {example}")
            return None

    def workspace_path(self, value: Any, where: str) -> Path | None:
        hint = "give the agent's /workspace folder as the bot sees it, e.g. /agents/0"
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty path string, not {_kind(value)}; {hint}")
        elif "\x00" in value:
            self.fail(where, f"contains a NUL character; {hint}")
        elif value.startswith("~"):
            self.fail(where, f"'~' is not expanded; write the full path; {hint}")
        else:
            return Path(os.path.abspath(self.base_dir / value))
        return None

    def max_file_bytes(self, value: Any, where: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.fail(where, f"must be a positive whole number of bytes, not {_short.repr(value)}; e.g. 52428800")
            return None
        return value

    def user_agents(self, data: Any, ids: set[str] | None) -> dict[str, str]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.fail(
                "user_agents", f"must be a mapping of Matrix user id to agent id, not {_kind(data)}; "
                'e.g. "@alice:example.org": agent-0'
            )
            return {}
        result: dict[str, str] = {}
        for user_id, agent_id in data.items():
            where = f"user_agents.{_quote(user_id)}"
            if not is_matrix_user_id(user_id):
                self.fail(where, "is not a Matrix user id; write it in full and quoted, e.g. \"@alice:example.org\"")
            elif not isinstance(agent_id, str):
                self.fail(where, f"must name an agent id, not {_kind(agent_id)}")
            elif ids is not None and agent_id not in ids:
                self.fail(where, f"{agent_id!r} is not one of the agents ({_listing(ids)}); use one of them")
            else:
                result[user_id] = agent_id
        return result

    def default_agent(self, value: Any, ids: set[str] | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail("default_agent", f"must be an agent id or null, not {_kind(value)}; null refuses unknown users")
            return None
        if ids is not None and value not in ids:
            self.fail("default_agent", f"{value!r} is not one of the agents ({_listing(ids)}); use one of them or null")
            return None
        return value

    def limits(self, data: Any) -> Limits:
        if data is None:
            return Limits()
        names = tuple(f.name for f in fields(Limits))
        if not isinstance(data, dict):
            self.fail("limits", f"must be a mapping of limit names to numbers, not {_kind(data)}; e.g. answer_parts: 8")
            return Limits()
        self.check_keys(data, "limits", required=(), optional=names)
        values: dict[str, int] = {}
        for key in names:
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                default = getattr(Limits(), key)
                self.fail(f"limits.{key}", f"must be a positive whole number, not {_short.repr(value)}; the default is {default}")
            else:
                values[key] = value
        return Limits(**values)


@dataclass(frozen=True)
class MatrixSettings:
    """How the bot logs in to Matrix, read from the environment.

    ``MATRIX_HOMESERVER`` (base URL), ``MATRIX_USER_ID``, and exactly one of
    ``MATRIX_ACCESS_TOKEN`` / ``MATRIX_PASSWORD``, each of which may instead
    be given as ``..._FILE``: the path of a file holding it (for container
    secrets). Either ``password`` or ``access_token`` is set, never both.
    """

    homeserver: str
    user_id: str
    password: Secret | None = None
    access_token: Secret | None = None

    def __repr__(self) -> str:
        auth = "access_token" if self.access_token is not None else "password"
        return f"MatrixSettings(homeserver={self.homeserver!r}, user_id={self.user_id!r}, auth={auth}=***)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MatrixSettings:
        """Read the settings; :class:`ConfigError` names every variable at fault.

        A secret file that cannot be read is :class:`UnreadableConfig` when
        it is the only problem (a host problem, exit status 5).
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []
        unreadable: list[str] = []
        homeserver = _env(env, "MATRIX_HOMESERVER", "the homeserver's base URL, e.g. https://matrix.example.org", problems)
        if homeserver is not None:
            parts = urlsplit(homeserver)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                problems.append(
                    f"MATRIX_HOMESERVER: {_short.repr(homeserver)} is not an http(s) URL; "
                    "set it to the homeserver's base URL, e.g. https://matrix.example.org"
                )
        user_id = _env(env, "MATRIX_USER_ID", "the bot's full Matrix user id, e.g. @lambda:example.org", problems)
        if user_id is not None and not is_matrix_user_id(user_id):
            problems.append(
                f"MATRIX_USER_ID: {_short.repr(user_id)} is not a Matrix user id; "
                "give it in full, e.g. @lambda:example.org"
            )
        token = _secret(env, "MATRIX_ACCESS_TOKEN", problems, unreadable)
        password = _secret(env, "MATRIX_PASSWORD", problems, unreadable)
        if token is not None and password is not None:
            problems.append("MATRIX_ACCESS_TOKEN and MATRIX_PASSWORD are both set; set only one of them")
        configured = any(env.get(name) for name in ("MATRIX_ACCESS_TOKEN", "MATRIX_PASSWORD"))
        configured = configured or any(env.get(f"{name}_FILE", "").strip() for name in ("MATRIX_ACCESS_TOKEN", "MATRIX_PASSWORD"))
        if not configured:
            problems.append(
                "MATRIX_ACCESS_TOKEN: not set; set MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD "
                "(or MATRIX_ACCESS_TOKEN_FILE / MATRIX_PASSWORD_FILE naming a file that holds it)"
            )
        if unreadable and not problems:
            raise UnreadableConfig.of(unreadable)
        if problems or unreadable:
            raise ConfigError.of([*problems, *unreadable])
        assert homeserver is not None and user_id is not None
        return cls(homeserver=homeserver.rstrip("/"), user_id=user_id, password=password, access_token=token)


def _env(env: Mapping[str, str], name: str, what: str, problems: list[str]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        problems.append(f"{name}: not set; set it to {what}")
        return None
    return value


def _secret(env: Mapping[str, str], name: str, problems: list[str], unreadable: list[str]) -> Secret | None:
    direct = env.get(name, "")
    file_name = env.get(f"{name}_FILE", "").strip()
    if direct and file_name:
        problems.append(f"{name} and {name}_FILE are both set; set only one of them")
        return None
    if direct:
        return Secret(direct)
    if not file_name:
        return None
    try:
        with open(file_name, encoding="utf-8") as f:
            value = f.read(64 * 1024)
    except OSError as exc:
        unreadable.append(f"{name}_FILE: cannot read {file_name!r} ({exc.strerror}); check the path and permissions")
        return None
    except UnicodeDecodeError:
        problems.append(f"{name}_FILE: {file_name!r} is not UTF-8 text; put the secret in it as plain text")
        return None
    # Files written by editors or `echo` end with a newline that is not part
    # of the secret.
    value = value.rstrip("\r\n")
    if not value:
        problems.append(f"{name}_FILE: {file_name!r} is empty; put the secret in it")
        return None
    return Secret(value)


def _looks_secret(key: Any) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key.lower().replace("-", "_")) is not None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}") + f" ({_short.repr(value)})"


def _quote(key: Any) -> str:
    if isinstance(key, str):
        return '"' + _short.repr(key)[1:-1].replace('"', '\\"') + '"'
    return _short.repr(key)


def _entry(path: str, key: Any) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}.{_quote(key)}" if path else _quote(key)


def _listing(names: set[str] | tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in sorted(names))
