"""Child specs: what a supervisor starts, and the policy the code asks for.

Policy fields left as ``None`` are taken from supervision.toml or the
library defaults (see ``policy.py`` for the order). Specs are checked when
built, so a bad one fails where it is written, not when it first crashes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from .backoff import Backoff
from .errors import ChildSpecError
from .mailbox import Overflow
from .policy import OnExhausted, Policy, Restart, Strategy

__all__ = ["ChildSpec", "SupervisorSpec", "ActorFn"]

#: An actor: ``async def actor(ctx, *args) -> None``.
ActorFn = Callable[..., Awaitable[None]]

_CHILD_FIELDS = ("restart", "shutdown", "backoff", "mailbox_capacity", "overflow", "call_timeout")
_SUP_FIELDS = ("strategy", "intensity", "period", "on_exhausted", "cool_down")
_ENUMS: dict[str, type[enum.Enum]] = {
    "restart": Restart, "overflow": Overflow, "strategy": Strategy, "on_exhausted": OnExhausted,
}


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ChildSpecError(
            f"{kind} name {name!r} must be a non-empty string without '/'; "
            "the name is one segment of the actor's path"
        )


#: Checked policy values by what they were (values and their types: True is
#: refused where 1 is taken): a spec built again and again with the same
#: settings (one per task of a DAG run) is checked once.
_CHECKED: dict[tuple[Any, ...], dict[str, Any]] = {}
_CHECKED_MAX = 256
#: The types of value a check is remembered for (compared with their type).
_PLAIN = frozenset({type(None), str, int, float, bool, Restart, Overflow, Strategy, OnExhausted})


def _explicit(spec: Any, names: Sequence[str]) -> dict[str, Any]:
    values = tuple(getattr(spec, name) for name in names)
    if not all(type(v) in _PLAIN for v in values):
        # A Backoff equals one whose fields are equal values of other types
        # (min=True and min=1): checked every time.
        return _check_explicit(spec, names)
    key = (tuple(names), values, tuple(type(v) for v in values))
    checked = _CHECKED.get(key)
    if checked is None:
        checked = _check_explicit(spec, names)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = checked
    return dict(checked)  # the caller's own: SupervisorSpec adds to it


def _check_explicit(spec: Any, names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(spec, name)
        if value is None:
            continue
        if name in _ENUMS:
            try:
                value = _ENUMS[name](value)
            except ValueError:
                choices = ", ".join(repr(str(c)) for c in _ENUMS[name])
                raise ChildSpecError(
                    f"{spec.name!r}: {name} = {value!r} is not one of {choices}"
                ) from None
        elif name == "shutdown" and value == "infinity":
            value = math.inf
        elif name == "backoff" and not isinstance(value, Backoff):
            raise ChildSpecError(f"{spec.name!r}: backoff: must be a Backoff(...), got {value!r}")
        out[name] = value
    # The one validation of policy values (Policy.problems), so that code and
    # supervision.toml refuse the same things (math.inf or 2.5 restarts, True
    # as a number of seconds); only the keys this spec sets are judged here.
    wrong = [(k, why) for k, why in Policy().merged(out).problems() if k.split(".")[0] in out]
    if wrong:
        raise ChildSpecError(f"{spec.name!r}: " + "; ".join(f"{k}: {why}" for k, why in wrong))
    return out


@dataclass(frozen=True)
class ChildSpec:
    """A worker: ``fn(ctx, *args)`` run as a Trio task under a supervisor."""

    name: str
    fn: ActorFn
    args: tuple[Any, ...] = ()
    restart: Restart | str | None = None
    shutdown: float | str | None = None
    backoff: Backoff | None = None
    mailbox_capacity: int | None = None
    overflow: Overflow | str | None = None
    call_timeout: float | None = None
    #: The policy keys this spec sets, checked and converted (set by __post_init__).
    _policy: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("child", self.name)
        if not callable(self.fn):
            raise ChildSpecError(f"child {self.name!r}: fn must be an async function, got {self.fn!r}")
        object.__setattr__(self, "args", tuple(self.args))
        # Checked (and converted) once, here, so a bad value fails where it is written.
        object.__setattr__(self, "_policy", _explicit(self, _CHILD_FIELDS))

    def explicit_policy(self) -> dict[str, Any]:
        """The policy fields this spec sets (the rest come from config or defaults)."""
        return dict(self._policy)


@dataclass(frozen=True)
class SupervisorSpec:
    """A nested supervisor: its own children, strategy and intensity.

    Its static ``children`` are started in order each time it starts.
    Children added later with ``start_child`` are gone after it restarts,
    as in OTP; look them up again with ``Registry.get_or_start``.
    """

    name: str
    children: Sequence[ChildSpec | SupervisorSpec] = ()
    strategy: Strategy | str | None = None
    intensity: int | None = None
    period: float | None = None
    on_exhausted: OnExhausted | str | None = None
    cool_down: float | None = None
    restart: Restart | str | None = None
    shutdown: float | str | None = None
    backoff: Backoff | None = None
    mailbox_capacity: int | None = field(default=None, repr=False)
    overflow: Overflow | str | None = field(default=None, repr=False)
    call_timeout: float | None = field(default=None, repr=False)
    #: The policy keys this spec sets, checked and converted (set by __post_init__).
    _policy: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("supervisor", self.name)
        object.__setattr__(self, "children", tuple(self.children))
        seen: set[str] = set()
        for child in self.children:
            if not isinstance(child, (ChildSpec, SupervisorSpec)):
                raise ChildSpecError(
                    f"supervisor {self.name!r}: children must be ChildSpec or SupervisorSpec, got {child!r}"
                )
            if child.name in seen:
                raise ChildSpecError(
                    f"supervisor {self.name!r}: two children are named {child.name!r}; "
                    "names must be unique among siblings"
                )
            seen.add(child.name)
        policy = _explicit(self, _CHILD_FIELDS + _SUP_FIELDS)
        # A supervisor's stop is its whole subtree's; OTP waits for it (infinity).
        policy.setdefault("shutdown", math.inf)
        object.__setattr__(self, "_policy", policy)

    def explicit_policy(self) -> dict[str, Any]:
        """The policy fields this spec sets (the rest come from config or defaults)."""
        return dict(self._policy)
