"""What a supervisor does when a child's incarnation ends: one pure function.

``decide(history, restart, backoff, parent, reason, now, rng)`` takes what
the supervisor knows about the child (its restart history), the child's
restart type and backoff, the supervisor's own policy (intensity, period,
on_exhausted, cool_down), why the incarnation ended and the time, and
returns a ``Decision``; it reads no clock and changes nothing, so the rules
are tested without a supervisor (and against the hypothesis model in
tests/runtime/test_runtime_restart_model.py).

The rules, in order:

1. A ``temporary`` child is never restarted: ``REMOVE`` (its spec goes too, as OTP).
2. A ``transient`` child that returned normally is not restarted: ``STOP``
   (its spec stays; ``restart_child`` or ``Registry.get_or_start`` starts it again).
3. Otherwise the restart is charged to the intensity window (OTP's
   accounting: restarts older than ``now - period`` are forgotten, one
   exactly ``period`` old still counts). Over ``intensity``: ``PARK`` (retry
   at ``now + cool_down``, the child's window cleared) under
   ``on_exhausted = "park"``, else ``ESCALATE``.
4. Within it: the backoff attempt grows by one, or starts again at 1 if the
   incarnation ran ``reset_after`` seconds; a zero delay is ``RESTART`` now,
   a positive one ``BACK_OFF`` until ``retry_at``.

The window is the child's own under ``park`` (one flapping child cannot use
up its siblings' budget) and the supervisor's under ``escalate``; the caller
passes the right one and applies ``Decision.update`` to it. The decision
says how to change the window (forget the n oldest, record this restart)
rather than returning a new one: a restart then costs the same whatever
the intensity (a window of 4,000 restarts is not copied 4,000 times).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from .backoff import Backoff
from .policy import OnExhausted, Policy, Restart

__all__ = ["Action", "Decision", "History", "decide", "expired"]


class Action(enum.StrEnum):
    RESTART = "restart"  #: start the next incarnation now
    BACK_OFF = "back_off"  #: start it at ``retry_at``
    PARK = "park"  #: intensity exhausted under park: start it at ``retry_at`` (after cool_down)
    ESCALATE = "escalate"  #: intensity exhausted under escalate: the supervisor fails to its parent
    STOP = "stop"  #: a transient child ended normally: it stays stopped, its spec kept
    REMOVE = "remove"  #: a temporary child ended: it is forgotten


@dataclass(frozen=True, slots=True)
class History:
    """What the decision needs to know about the child's past."""

    attempt: int  #: restarts in a row so far (drives the backoff)
    started_at: float  #: when the incarnation that just ended started
    window: Sequence[float]  #: restart times still charged to the intensity, oldest first


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    attempt: int  #: restarts in a row after this exit
    retry_at: float | None = None  #: for BACK_OFF and PARK
    delay: float = 0.0  #: seconds until ``retry_at``
    forget: int = 0  #: how many of the oldest restarts leave the window
    record: float | None = None  #: the restart time the window gains

    def update(self, window: deque[float]) -> None:
        """Apply this decision to the window it was made from."""
        for _ in range(self.forget):
            window.popleft()
        if self.record is not None:
            window.append(self.record)


def expired(window: Sequence[float], now: float, period: float) -> int:
    """How many of the oldest restarts in ``window`` a restart at ``now`` forgets.

    As OTP's ``add_restart``: a restart at ``t`` is kept while ``t >= now - period``.
    Only the expired ones are looked at, so this is cheap whatever the window's size.
    """
    threshold = now - period
    n = 0
    for t in window:
        if t >= threshold:
            break
        n += 1
    return n


def decide(
    history: History,
    restart: Restart,
    backoff: Backoff,
    parent: Policy,
    reason: BaseException | None,
    now: float,
    rng: random.Random | None = None,
) -> Decision:
    """The rules of the module docstring; ``reason`` is None for a normal return."""
    if restart is Restart.TEMPORARY:
        return Decision(Action.REMOVE, history.attempt)
    if restart is Restart.TRANSIENT and reason is None:
        return Decision(Action.STOP, history.attempt)
    window = history.window
    forget = expired(window, now, parent.period)
    if len(window) - forget + 1 > parent.intensity:
        if parent.on_exhausted is OnExhausted.PARK:
            # A parked child comes back with a fresh budget: its window empties.
            return Decision(Action.PARK, 0, now + parent.cool_down, parent.cool_down, forget=len(window))
        return Decision(Action.ESCALATE, history.attempt, forget=forget, record=now)
    attempt = 1 if now - history.started_at >= backoff.reset_after else history.attempt + 1
    delay = backoff.delay(attempt, rng)
    if delay <= 0:
        return Decision(Action.RESTART, attempt, forget=forget, record=now)
    return Decision(Action.BACK_OFF, attempt, now + delay, delay, forget=forget, record=now)
