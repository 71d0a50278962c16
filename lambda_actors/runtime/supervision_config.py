"""supervision.toml: the tree's policies by path, checked before anything starts.

Layout::

    [defaults]                  # every node unless overridden
    intensity = 3

    [node]                      # the node at path "node" (the root)
    strategy = "one_for_one"

    [node.agents."*"]           # every child of node/agents
    on_exhausted = "park"

    [node.agents."*".backoff]   # its backoff
    min = 0.5

A table's keys are policy keys (``POLICY_KEYS``); ``backoff`` is a table of
``BACKOFF_KEYS``; any other table is a child path segment, ``"*"`` matching
any one segment. For a given path the exact entry wins over a wildcard one,
field by field. Everything wrong in the file is reported at once, in one
``SupervisionConfigError`` naming the file, each key path and the fix.
"""

from __future__ import annotations

import enum
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .mailbox import Overflow
from .policy import BACKOFF_KEYS, POLICY_KEYS, OnExhausted, Policy, Restart, Strategy

__all__ = ["SupervisionConfig", "SupervisionConfigError", "load_supervision_config", "parse_supervision_config"]

_EMPTY: Mapping[str, Any] = {}

_ENUM_KEYS: dict[str, type[enum.Enum]] = {
    "restart": Restart, "overflow": Overflow, "strategy": Strategy, "on_exhausted": OnExhausted,
}
_SECONDS_OR_INFINITY = {"shutdown", "call_timeout"}


class SupervisionConfigError(ValueError):
    """supervision.toml cannot be used; ``problems`` lists (key path, what to do)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        # A problem of the whole file (unreadable, not TOML) has no key path.
        lines = [f"{source}: [{key}] {why}" if key else f"{source}: {why}" for key, why in problems]
        super().__init__("\n".join(lines) if len(lines) == 1 else
                         f"{len(lines)} problems in {source}:\n  " + "\n  ".join(lines))
        self.source = source
        self.problems = problems


@dataclass(frozen=True)
class SupervisionConfig:
    """A validated supervision.toml. ``for_path`` gives the layer for one actor path."""

    source: str
    defaults: Mapping[str, Any]
    entries: Mapping[tuple[str, ...], Mapping[str, Any]]
    _cache: dict[str, Mapping[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    _merged: dict[tuple[tuple[str, ...], ...], Mapping[str, Any]] = field(
        default_factory=dict, repr=False, compare=False)

    def for_path(self, path: str) -> Mapping[str, Any]:
        """The file's settings for ``path``: wildcard entries first, the most exact last."""
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        segments = tuple(path.split("/"))
        matches = [
            key for key in self.entries
            if len(key) == len(segments)
            and all(k == "*" or k == s for k, s in zip(key, segments))
        ]
        # Fewer exact segments first, so the most exact entry is applied last.
        matches.sort(key=lambda key: sum(k != "*" for k in key))
        ident = tuple(matches)
        layer = self._merged.get(ident)
        if layer is None:
            merged: dict[str, Any] = {}
            for key in matches:
                entry = self.entries[key]
                for k, v in entry.items():
                    if k == "backoff":
                        merged["backoff"] = {**merged.get("backoff", {}), **v}
                    else:
                        merged[k] = v
            layer = merged or _EMPTY
            self._merged[ident] = layer
        if len(self._cache) < 100_000:
            self._cache[path] = layer
        return layer

    def policy_for(self, path: str) -> Policy:
        """The policy of ``path`` from this file alone (library defaults underneath)."""
        return Policy().merged(self.defaults).merged(self.for_path(path))


def load_supervision_config(path: str | Path) -> SupervisionConfig:
    """Read and check a supervision.toml; raises ``SupervisionConfigError``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SupervisionConfigError(source, [("", f"cannot read the file ({exc.strerror}); check the path")]) from None
    return parse_supervision_config(text, source)


def parse_supervision_config(text: str, source: str = "supervision.toml") -> SupervisionConfig:
    """Check TOML text as a supervision config; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SupervisionConfigError(source, [("", f"is not valid TOML: {exc}")]) from None
    problems: list[tuple[str, str]] = []
    defaults: Mapping[str, Any] = _EMPTY
    entries: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for name, value in data.items():
        if name == "defaults":
            if not isinstance(value, dict):
                problems.append(("defaults", "must be a table: write [defaults]"))
                continue
            layer, children = _policy_table(value, ("defaults",), problems)
            for child in children:
                problems.append((f"defaults.{child}", "[defaults] holds policy keys only; "
                                 "put per-path settings in their own table, e.g. [node.store]"))
            defaults = layer
        elif isinstance(value, dict):
            _walk(value, (name,), entries, problems)
        else:
            problems.append((name, _unknown_key_hint(name)))
    # Every value judged by the one validation (Policy.problems), with what
    # the file set around it, whatever else is wrong: each mistake once, at once.
    base = Policy().merged(defaults)
    in_defaults = base.problems()
    for why_key, why in in_defaults:
        problems.append((f"defaults.{why_key}", why))
    for key, layer in entries.items():
        for why_key, why in base.merged(layer).problems():
            # A mistake of [defaults] shows up in every entry: report it once,
            # unless this entry sets that key itself.
            if (why_key, why) in in_defaults and why_key.split(".")[0] not in layer:
                continue
            problems.append((".".join(_quote(k) for k in key) + "." + why_key, why))
    if problems:
        # In the order of the file's top-level tables, so the list reads like the file.
        tops = {_quote(k): i for i, k in enumerate(data)}
        problems.sort(key=lambda p: tops.get(p[0].split(".")[0], -1))
        raise SupervisionConfigError(source, problems)
    return SupervisionConfig(source, defaults, entries)


def _quote(segment: str) -> str:
    bare = segment.replace("_", "").replace("-", "").isalnum()
    return segment if bare else f'"{segment}"'


def _walk(table: dict[str, Any], path: tuple[str, ...], entries: dict[tuple[str, ...], Mapping[str, Any]],
          problems: list[tuple[str, str]]) -> None:
    layer, children = _policy_table(table, path, problems)
    if layer:
        entries[path] = layer
    for name in children:
        _walk(table[name], path + (name,), entries, problems)


def _policy_table(table: dict[str, Any], path: tuple[str, ...],
                  problems: list[tuple[str, str]]) -> tuple[Mapping[str, Any], list[str]]:
    """Split a table into its checked policy keys and the names of its child tables."""
    where = ".".join(_quote(p) for p in path)
    layer: dict[str, Any] = {}
    children: list[str] = []
    for key, value in table.items():
        keypath = f"{where}.{_quote(key)}"
        if key == "backoff":
            if not isinstance(value, dict):
                problems.append((keypath, "must be a table of " + ", ".join(BACKOFF_KEYS)
                                 + f", e.g. [{where}.backoff] with min = 0.5"))
                continue
            backoff: dict[str, Any] = {}
            for bkey, bvalue in value.items():
                if bkey not in BACKOFF_KEYS:
                    problems.append((f"{keypath}.{bkey}", f"unknown backoff key; use one of {', '.join(BACKOFF_KEYS)}"))
                    continue
                backoff[bkey] = bvalue  # judged by Backoff.problems, with its neighbours
            layer["backoff"] = backoff
        elif key in POLICY_KEYS:
            checked, error = _check_value(key, value)
            if error:
                problems.append((keypath, error))
            else:
                layer[key] = checked
        elif isinstance(value, dict):
            children.append(key)
        else:
            problems.append((keypath, _unknown_key_hint(key)))
    return layer, children


def _unknown_key_hint(key: str) -> str:
    near = [k for k in POLICY_KEYS if k.startswith(key[:3])] if len(key) >= 3 else []
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return (f"unknown key{hint}; policy keys are {', '.join(POLICY_KEYS)}, "
            "and a table names a child path")


def _check_value(key: str, value: Any) -> tuple[Any, str]:
    """(the value converted for ``Policy``, "") or (None, what is wrong).

    Only what TOML cannot say directly is converted here: names to their
    enum, ``"infinity"`` to ``math.inf``. Numbers pass as written;
    ``Policy.problems`` judges them, as it does for code.
    """
    if key in _ENUM_KEYS:
        enum = _ENUM_KEYS[key]
        choices = ", ".join(f'"{c}"' for c in enum)
        if not isinstance(value, str):
            return None, f"must be one of {choices}, got {value!r}"
        try:
            return enum(value), ""
        except ValueError:
            return None, f"{value!r} is not one of {choices}"
    if key in _SECONDS_OR_INFINITY and value == "infinity":
        return math.inf, ""
    if isinstance(value, str) and key in _SECONDS_OR_INFINITY:
        return None, f'must be a number of seconds or "infinity", got {value!r}'
    return value, ""
