"""``config/node.toml``: the node's own settings (SPEC section 10).

What the node is and how it is reached, as opposed to which agents it
serves (agents.yaml). Read once at start; every problem is reported at once,
each with its key path and the fix, as agents.yaml's are. The file is
secret-free: an API client is known by the SHA-256 of its token, never the
token itself, so the file can be committed and shown.

Only the keys that exist today are accepted; an unknown key is refused by
name (usually a typo), so a setting is never silently ignored.
"""

from __future__ import annotations

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
    "DEFAULT_LISTEN",
    "SCOPES",
    "ApiClient",
    "Listen",
    "NodeConfig",
    "NodeConfigError",
    "load_node_config",
    "new_token",
    "parse_listen",
    "parse_node_config",
]

#: The scopes a client may hold (SPEC section 7).
SCOPES = frozenset({"approvals", "agents", "dag"})
DEFAULT_LISTEN = "127.0.0.1:8470"
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
class NodeConfig:
    node_id: str = field(default_factory=lambda: _default_node_id())
    #: None when the API is switched off (``--http off``).
    listen: Listen | None = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    clients: tuple[ApiClient, ...] = ()
    source: str = "<defaults>"

    def client_for(self, token: str) -> ApiClient | None:
        """The client holding ``token``; every client is compared, so the time
        taken says nothing about which one matched."""
        found = None
        for client in self.clients:
            if client.accepts(token):
                found = client
        return found


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
    for later in ("dag", "matrix"):
        if later in data:
            problem(later, "is not used by this version yet (DAG runs come later); remove the section")
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
    if problems:
        raise NodeConfigError(source, problems)
    return NodeConfig(node_id=node_id, listen=listen, clients=tuple(clients), source=source)


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
