"""``config/node.toml``: the node's own settings (SPEC section 10).

What the node is and how it is reached, as opposed to which agents it
serves (agents.yaml). Read once at start; every problem is reported at once,
each with its key path and the fix, as agents.yaml's are. The file is
secret-free: an API client is known by the SHA-256 of its token, never the
token itself, so the file can be committed and shown.

Every key of SPEC section 10 is accepted; an unknown key is refused by name
(usually a typo), so a setting is never silently ignored. Every execution
mode of SPEC 8.3 runs; :func:`unbuilt_mode` still says why ``run`` refuses a
mode a node cannot run as configured (several nodes need the heartbeat room:
it is how nodes know each other's accounts and deaths).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUILT_MODES",
    "DEFAULT_LISTEN",
    "SCOPES",
    "ApiClient",
    "CLUSTER_MODES",
    "DagBroadcast",
    "DagCluster",
    "DagConfig",
    "DagLocal",
    "ExecutionMode",
    "Listen",
    "NodeConfig",
    "NodeConfigError",
    "NodeHeartbeat",
    "load_node_config",
    "new_token",
    "parse_listen",
    "parse_node_config",
    "unbuilt_mode",
]

#: The scopes a client may hold (SPEC section 7).
SCOPES = frozenset({"approvals", "agents", "dag"})
DEFAULT_LISTEN = "127.0.0.1:8470"
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: A room alias (#name:server) or id (!opaque:server); "" means the default alias.
_ROOM = re.compile(r"[#!][^:\s]+:[^\s]+")


class ExecutionMode(enum.StrEnum):
    """SPEC 8.3: where a run's tasks execute."""

    LOCAL = "local"  #: this node runs the tasks; no Matrix at all
    HYBRID = "hybrid"  #: this node runs the tasks and broadcasts their status
    MATRIX = "matrix"  #: tasks offered in the run's room, taken by nodes that accept them
    FEDERATION = "federation"  #: a coordinator assigns tasks to named nodes


#: The modes a node can run.
BUILT_MODES = frozenset(ExecutionMode)
#: The modes of several nodes (SPEC 8.3): runs go through the cluster room.
CLUSTER_MODES = frozenset({ExecutionMode.MATRIX, ExecutionMode.FEDERATION})


class NodeConfigError(Exception):
    """node.toml cannot be used; ``problems`` lists every ``(key path, what to do)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {where}: {what}" if where else f"{source}: {what}" for where, what in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Listen:
    """Where the HTTP API listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ApiClient:
    """One caller of the HTTP API, known by the SHA-256 of its bearer token."""

    name: str
    token_sha256: str
    scopes: frozenset[str]

    def accepts(self, token: str) -> bool:
        """True when ``token`` is this client's (compared in constant time)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        return hmac.compare_digest(digest, self.token_sha256)


@dataclass(frozen=True)
class DagLocal:
    """``[dag.local]``: this node's own task slots."""

    #: Tasks of all runs at once on this node (each run's own limit applies too).
    max_workers: int = 4
    #: SPEC 10's default agent for DAG tasks on this node. A DAG file still
    #: names each task's agent (spec.py checks that); this is for what names
    #: none, such as a one-task run made up by a tool.
    default_agent: str = "agent-0"


@dataclass(frozen=True)
class DagCluster:
    """``[dag.cluster]``: the room every node of the network shares in modes
    ``matrix`` and ``federation`` (SPEC 8.3)."""

    #: An alias or room id; "" means ``#dag-cluster-default:<server>``.
    room: str = ""

    def room_for(self, server: str) -> str:
        return self.room or f"#dag-cluster-default:{server}"


@dataclass(frozen=True)
class DagConfig:
    """``[dag]``: how DAG runs execute on this node (SPEC 8)."""

    execution_mode: ExecutionMode = ExecutionMode.HYBRID
    #: Command tasks run local programs: off unless the operator says so.
    allow_commands: bool = False
    accept_remote_tasks: bool = False
    local: DagLocal = field(default_factory=DagLocal)
    cluster: DagCluster = field(default_factory=DagCluster)

    @property
    def clustered(self) -> bool:
        """Runs go through the cluster room (modes ``matrix`` and ``federation``)."""
        return self.execution_mode in CLUSTER_MODES


@dataclass(frozen=True)
class DagBroadcast:
    """``[matrix.dag_broadcast]``: the status room of SPEC 8.1."""

    enabled: bool = True
    #: An alias or room id; "" means ``#dag-status-<node_id>:<server>``.
    room: str = ""
    batch_interval_ms: int = 500
    #: Whether ``cis.dag.task.output`` events are sent.
    broadcast_output: bool = True

    def room_for(self, node_id: str, server: str) -> str:
        return self.room or f"#dag-status-{node_id}:{server}"


@dataclass(frozen=True)
class NodeHeartbeat:
    """``[matrix.node_heartbeat]``: the heartbeat room of SPEC 8.2."""

    enabled: bool = True
    #: An alias or room id; "" means ``#node-heartbeat-default:<server>``.
    room: str = ""
    interval_secs: int = 30
    include_resources: bool = True

    def room_for(self, server: str) -> str:
        return self.room or f"#node-heartbeat-default:{server}"


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = field(default_factory=lambda: _default_node_id())
    #: None when the API is switched off (``--http off``).
    listen: Listen | None = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    clients: tuple[ApiClient, ...] = ()
    source: str = "<defaults>"
    dag: DagConfig = field(default_factory=DagConfig)
    dag_broadcast: DagBroadcast = field(default_factory=DagBroadcast)
    node_heartbeat: NodeHeartbeat = field(default_factory=NodeHeartbeat)

    def client_for(self, token: str) -> ApiClient | None:
        """The client holding ``token``; every client is compared, so the time
        taken says nothing about which one matched."""
        found = None
        for client in self.clients:
            if client.accepts(token):
                found = client
        return found


def unbuilt_mode(config: NodeConfig) -> str | None:
    """The line ``run`` refuses to start with when ``[dag] execution_mode``
    names a mode this version cannot run yet; None when it can."""
    mode = config.dag.execution_mode
    if mode in CLUSTER_MODES and not config.node_heartbeat.enabled:
        return (
            f"{config.source}: matrix.node_heartbeat.enabled: mode {str(mode)!r} needs the heartbeat room"
            " (it is how nodes know each other's accounts and deaths); set it to true, or use 'local' or 'hybrid'"
        )
    if mode in BUILT_MODES:
        return None
    built = " or ".join(repr(str(m)) for m in ExecutionMode if m in BUILT_MODES)
    return f"{config.source}: dag.execution_mode: {str(mode)!r} is not built; use {built}"


def new_token() -> tuple[str, str]:
    """A fresh random token and the SHA-256 hex that node.toml stores."""
    token = "la_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def parse_listen(text: str) -> Listen | None:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) or ``off``; ValueError with the fix."""
    if text.strip().lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT; write e.g. {DEFAULT_LISTEN!r}, or 'off'")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range; use 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address; write e.g. '[::1]:8470'") from None
    return Listen(host, port)


def load_node_config(path: str | os.PathLike[str] | None, *, required: bool = False) -> NodeConfig:
    """Read node.toml. A missing file means all defaults unless ``required``
    (the operator named it explicitly)."""
    if path is None:
        return NodeConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise NodeConfigError(source, [("", "no such file; create it or leave out --node-config")]) from None
        return NodeConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise NodeConfigError(source, [("", f"cannot be read ({exc}); check the path and its permissions")]) from None
    return parse_node_config(text, source=source)


def parse_node_config(text: str, *, source: str = "<node config>") -> NodeConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(source, [("", f"TOML syntax error: {exc}; fix the syntax there")]) from None
    problems: list[tuple[str, str]] = []

    def problem(where: str, what: str) -> None:
        problems.append((where, what))

    _unknown(data, "", {"node_id", "api", "dag", "matrix"}, problem)
    node_id = data.get("node_id", None)
    if node_id is None:
        node_id = _default_node_id()
    elif not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        problem("node_id", "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
        node_id = "invalid"
    listen: Listen | None = parse_listen(DEFAULT_LISTEN)
    clients: list[ApiClient] = []
    api = data.get("api", {})
    if not isinstance(api, dict):
        problem("api", "must be a table ([api])")
        api = {}
    _unknown(api, "api", {"listen", "clients"}, problem)
    if "listen" in api:
        if not isinstance(api["listen"], str):
            problem("api.listen", f"must be a string such as {DEFAULT_LISTEN!r} or 'off'")
        else:
            try:
                listen = parse_listen(api["listen"])
            except ValueError as exc:
                problem("api.listen", str(exc))
    entries = api.get("clients", [])
    if not isinstance(entries, list):
        problem("api.clients", "must be an array of tables ([[api.clients]])")
        entries = []
    names: set[str] = set()
    hashes: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"api.clients[{index}]"
        if not isinstance(entry, dict):
            problem(where, "must be a table with name, token_sha256 and scopes")
            continue
        _unknown(entry, where, {"name", "token_sha256", "scopes"}, problem, secrets_hint=True)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            problem(f"{where}.name", "missing; give the client a name (it is shown in the audit trail)")
            name = f"client-{index}"
        elif name in names:
            problem(f"{where}.name", f"{name!r} is used twice; give each client its own name")
        names.add(name)
        digest = entry.get("token_sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
            problem(
                f"{where}.token_sha256",
                "must be the 64-hex-digit SHA-256 of the client's token; run `lambda-actors token` for a new one",
            )
            digest = ""
        elif digest.lower() in hashes:
            problem(f"{where}.token_sha256", "the same token is given to two clients; give each its own token")
        hashes.add(str(digest).lower())
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            problem(f"{where}.scopes", f"must be a non-empty list of scopes from {sorted(SCOPES)}")
            scopes = []
        else:
            unknown = sorted(set(scopes) - SCOPES)
            if unknown:
                problem(f"{where}.scopes", f"unknown scope(s) {unknown}; the scopes are {sorted(SCOPES)}")
        clients.append(ApiClient(name, str(digest).lower(), frozenset(s for s in scopes if s in SCOPES)))
    dag, broadcast, heartbeat = _dag_sections(data, problem)
    if problems:
        raise NodeConfigError(source, problems)
    return NodeConfig(
        node_id=node_id, listen=listen, clients=tuple(clients), source=source,
        dag=dag, dag_broadcast=broadcast, node_heartbeat=heartbeat,
    )


# -- [dag] and [matrix.*] ---------------------------------------------------------------
#
# Each section is a table of its keys: (kind, check, what a good value is).
# One reader walks them all, so every key gets the same refusal wording and
# a mistake in one never hides a mistake in another.


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _int_in(low: int, high: int) -> Any:
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return check


def _mode(value: Any) -> bool:
    return isinstance(value, str) and value in {str(m) for m in ExecutionMode}


def _agent(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value == value.strip()


def _room(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or bool(_ROOM.fullmatch(value)))


_MODES_TEXT = " | ".join(str(m) for m in ExecutionMode)
_ROOM_TEXT = "a room alias ('#name:server') or id ('!id:server'), or \"\" for the default"

_DAG_KEYS: dict[str, tuple[Any, str]] = {
    "execution_mode": (_mode, f"must be one of {_MODES_TEXT}"),
    "allow_commands": (_bool, "must be true or false"),
    "accept_remote_tasks": (_bool, "must be true or false"),
}
_DAG_LOCAL_KEYS: dict[str, tuple[Any, str]] = {
    "max_workers": (_int_in(1, 1024), "must be a whole number of task slots from 1 to 1024"),
    "default_agent": (_agent, "must be an agent id (a configured agent's id or a registered agent's DID)"),
}
_CLUSTER_KEYS: dict[str, tuple[Any, str]] = {
    "room": (_room, f"must be {_ROOM_TEXT}"),
}
_BROADCAST_KEYS: dict[str, tuple[Any, str]] = {
    "enabled": (_bool, "must be true or false"),
    "room": (_room, f"must be {_ROOM_TEXT}"),
    "batch_interval_ms": (_int_in(1, 60_000), "must be whole milliseconds from 1 to 60000 (default 500)"),
    "broadcast_output": (_bool, "must be true or false"),
}
_HEARTBEAT_KEYS: dict[str, tuple[Any, str]] = {
    "enabled": (_bool, "must be true or false"),
    "room": (_room, f"must be {_ROOM_TEXT}"),
    "interval_secs": (_int_in(1, 86_400), "must be whole seconds from 1 to 86400 (default 30)"),
    "include_resources": (_bool, "must be true or false"),
}


def _section(
    data: dict[str, Any], where: str, keys: dict[str, tuple[Any, str]], problem: Any, *, tables: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The section's good values (bad ones reported and left out, so the
    default stands in) and its sub-tables named in ``tables``."""
    table = _table(data, where, problem)
    _unknown(table, where, set(keys) | set(tables), problem)
    good: dict[str, Any] = {}
    for key, (check, fix) in keys.items():
        if key in table:
            if check(table[key]):
                good[key] = table[key]
            else:
                problem(f"{where}.{key}", f"{fix}; it is {table[key]!r}")
    return good, {name: table.get(name, {}) for name in tables}


def _table(data: dict[str, Any], where: str, problem: Any) -> dict[str, Any]:
    key = where.rpartition(".")[2]
    value = data.get(key, {})
    if not isinstance(value, dict):
        problem(where, f"must be a table ([{where}])")
        return {}
    return value


def _dag_sections(data: dict[str, Any], problem: Any) -> tuple[DagConfig, DagBroadcast, NodeHeartbeat]:
    dag, subs = _section(data, "dag", _DAG_KEYS, problem, tables=frozenset({"local", "cluster"}))
    local, _ = _section(subs, "dag.local", _DAG_LOCAL_KEYS, problem)
    cluster, _ = _section(subs, "dag.cluster", _CLUSTER_KEYS, problem)
    if "execution_mode" in dag:
        dag["execution_mode"] = ExecutionMode(dag["execution_mode"])
    matrix = _table(data, "matrix", problem)
    _unknown(matrix, "matrix", {"dag_broadcast", "node_heartbeat"}, problem)
    broadcast, _ = _section(matrix, "matrix.dag_broadcast", _BROADCAST_KEYS, problem)
    heartbeat, _ = _section(matrix, "matrix.node_heartbeat", _HEARTBEAT_KEYS, problem)
    return DagConfig(**dag, local=DagLocal(**local), cluster=DagCluster(**cluster)), DagBroadcast(**broadcast), NodeHeartbeat(**heartbeat)


def _unknown(table: dict[str, Any], where: str, allowed: set[str], problem: Any, *, secrets_hint: bool = False) -> None:
    for key in table:
        if key in allowed:
            continue
        path = f"{where}.{key}" if where else key
        if secrets_hint and key.lower() in {"token", "secret", "password"}:
            problem(path, "a token never goes in this file; store its SHA-256 as token_sha256 (`lambda-actors token`)")
        else:
            problem(path, f"unknown key; the keys here are {sorted(allowed)}")


def _default_node_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-.") or "node"
    return name if _NODE_ID.fullmatch(name) else "node"
