"""The knobs of supervision, and how layers of them combine.

One ``Policy`` describes both roles a node of the tree can play: as a child
(restart type, shutdown timeout, backoff, mailbox) and, if it is a
supervisor, as a parent (strategy, intensity, what to do when exhausted).
Layers are merged field by field: library defaults, then ``[defaults]`` from
supervision.toml, then what the code's spec sets, then the file's entries for
the path (wildcard, then exact). The operator's file has the last word.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from .backoff import Backoff
from .mailbox import Overflow

__all__ = ["Restart", "Strategy", "OnExhausted", "Policy", "POLICY_KEYS", "BACKOFF_KEYS"]


class Restart(enum.StrEnum):
    """When a child that exited is started again (OTP's restart types)."""

    PERMANENT = "permanent"  #: always
    TRANSIENT = "transient"  #: only after an abnormal exit (an exception, or killed)
    TEMPORARY = "temporary"  #: never; its address stops for good when it exits


class Strategy(enum.StrEnum):
    """Which children restart when one of them exits (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"  #: just that child
    ONE_FOR_ALL = "one_for_all"  #: all children (the others are stopped first)
    REST_FOR_ONE = "rest_for_one"  #: that child and every child started after it


class OnExhausted(enum.StrEnum):
    """What a supervisor does when restarts exceed its intensity."""

    ESCALATE = "escalate"  #: stop all children and fail to the parent, as OTP does
    PARK = "park"  #: stop only the failing child; try it again after ``cool_down``


@dataclass(frozen=True, slots=True)
class Policy:
    """Every supervision setting of one node of the tree. See ``docs/runtime.md``."""

    # As a child.
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    mailbox_capacity: int = 1000
    overflow: Overflow = Overflow.BLOCK
    call_timeout: float = 5.0
    # As a supervisor.
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 3
    period: float = 5.0
    on_exhausted: OnExhausted = OnExhausted.ESCALATE
    cool_down: float = 60.0

    def merged(self, layer: Mapping[str, Any]) -> Policy:
        """This policy with the keys of ``layer`` applied (``backoff`` merges per field)."""
        if not layer:
            return self
        changes = dict(layer)
        bo = changes.get("backoff")
        if isinstance(bo, Mapping):
            changes["backoff"] = replace(self.backoff, **bo)
        return replace(self, **changes)

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is wrong and how to fix it) for each invalid or impossible setting.

        The one validation of a policy, whether it came from code (a spec's
        keywords) or from supervision.toml: the file loader converts names
        and ``"infinity"`` and leaves every other judgement to this.
        """
        out: list[tuple[str, str]] = []
        for key, kind in _ENUMS.items():
            value = getattr(self, key)
            if not isinstance(value, kind):
                choices = ", ".join(f'"{c}"' for c in kind)
                out.append((key, f"must be one of {choices}, got {value!r}"))
        if not _is_number(self.shutdown) or not self.shutdown >= 0:
            out.append(("shutdown", f"must be seconds >= 0 (0 cancels at once) or \"infinity\", got {self.shutdown!r}"))
        if not _is_whole(self.mailbox_capacity) or self.mailbox_capacity < 1:
            out.append(("mailbox_capacity", "must be a whole number >= 1 so messages can be held "
                                            f"across a restart, got {self.mailbox_capacity!r}"))
        if not _is_number(self.call_timeout) or not self.call_timeout > 0:
            out.append(("call_timeout", f"must be seconds > 0 (\"infinity\" for none), got {self.call_timeout!r}"))
        if not _is_whole(self.intensity) or self.intensity < 0:
            out.append(("intensity", f"must be a whole number of restarts >= 0, got {self.intensity!r}"))
        if not _is_number(self.period) or not (self.period > 0 and math.isfinite(self.period)):
            out.append(("period", f"must be a finite number of seconds > 0, got {self.period!r}"))
        if not _is_number(self.cool_down) or not (self.cool_down >= 0 and math.isfinite(self.cool_down)):
            out.append(("cool_down", f"must be a finite number of seconds >= 0, got {self.cool_down!r}"))
        if self.on_exhausted is OnExhausted.PARK and self.strategy in (Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE):
            out.append((
                "on_exhausted",
                f"\"park\" isolates one child, but strategy {str(self.strategy)!r} restarts "
                "children together; use strategy = \"one_for_one\", or on_exhausted = "
                "\"escalate\" and park the whole group from its parent",
            ))
        if isinstance(self.backoff, Backoff):
            out.extend((f"backoff.{key}", why) for key, why in self.backoff.problems())
        else:
            out.append(("backoff", f"must be a Backoff(...) (a table in supervision.toml), got {self.backoff!r}"))
        return out


def _is_number(value: object) -> bool:
    """An int or float, not a bool (``True`` is an int to Python, never a duration to us)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    """An int, not a bool: 2.5 restarts or ``math.inf`` restarts mean nothing."""
    return isinstance(value, int) and not isinstance(value, bool)


_ENUMS: dict[str, type[enum.Enum]] = {
    "restart": Restart, "overflow": Overflow, "strategy": Strategy, "on_exhausted": OnExhausted,
}


#: The keys a supervision.toml table may set, with their Python types.
POLICY_KEYS: dict[str, Any] = {f.name: f.type for f in fields(Policy)}
BACKOFF_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Backoff))
