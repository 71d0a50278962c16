"""Where a child is in its life (``Supervisor.child_state``), and the moves between.

Every change of a child's status goes through ``transition``, which checks
it against ``TRANSITIONS`` and raises ``IllegalTransition`` (a runtime bug)
on a move the table does not list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Status", "ChildState", "IllegalTransition", "TRANSITIONS", "transition"]


class Status(enum.StrEnum):
    NOT_STARTED = "not_started"  #: added, but its supervisor has not started it yet; messages are held
    RUNNING = "running"  #: an incarnation is running (or about to, this tick)
    BACKING_OFF = "backing_off"  #: waiting out a backoff delay; messages are held
    PARKED = "parked"  #: intensity exhausted under ``park``; messages are held until ``retry_at``
    WAITING = "waiting"  #: stopped for a one_for_all / rest_for_one group restart; messages are held
    STOPPING = "stopping"  #: its supervisor is stopping it
    STOPPED = "stopped"  #: terminated, or ended for good; sends raise ``ActorStopped``


class IllegalTransition(RuntimeError):
    """The runtime tried to move a child between two statuses that do not follow each other.

    Always a bug in the runtime, never in the actor: please report it with
    the message, which names the child and both statuses.
    """

    def __init__(self, path: str, old: Status, new: Status) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing"
        super().__init__(
            f"{path}: a child cannot go from {old} to {new} (from {old} it may go to {allowed}); "
            "this is a bug in lambda_actors' supervisor, please report it"
        )
        self.path = path
        self.old = old
        self.new = new


_S = Status
#: Every legal move of a child's status. Staying put is always allowed.
#: Why each one exists:
#:
#: * NOT_STARTED -> RUNNING: its supervisor starts it; -> STOPPED: terminated
#:   or removed first; -> WAITING / BACKING_OFF: a group restart reaches it
#:   before it ran.
#: * RUNNING -> RUNNING: restarted in place (one_for_one, no delay);
#:   -> BACKING_OFF / PARKED: by the restart decision; -> WAITING: its exit is
#:   handed to the supervisor's loop (group strategies); -> STOPPING: its
#:   supervisor stops it, or it ended while its supervisor is stopping;
#:   -> STOPPED: a transient that returned, a temporary that ended.
#: * BACKING_OFF / PARKED -> RUNNING: the timer fired; -> STOPPING / STOPPED /
#:   NOT_STARTED: stopped (for good, or with its supervisor) while waiting.
#: * WAITING -> RUNNING / BACKING_OFF: its group starts (now or after the
#:   delay); -> STOPPING / STOPPED / NOT_STARTED: stopped while waiting.
#: * STOPPING -> WAITING: stopped as part of a group; -> STOPPED: for good;
#:   -> NOT_STARTED: its supervisor's incarnation ended (the next one starts it).
#: * STOPPED -> RUNNING / NOT_STARTED: ``restart_child``, or a new
#:   incarnation of its supervisor starts its static children again.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    _S.NOT_STARTED: frozenset({_S.RUNNING, _S.STOPPED, _S.WAITING, _S.BACKING_OFF}),
    _S.RUNNING: frozenset({_S.RUNNING, _S.BACKING_OFF, _S.PARKED, _S.WAITING, _S.STOPPING, _S.STOPPED}),
    _S.BACKING_OFF: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.NOT_STARTED, _S.WAITING}),
    _S.PARKED: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.NOT_STARTED}),
    _S.WAITING: frozenset({_S.RUNNING, _S.BACKING_OFF, _S.STOPPING, _S.STOPPED, _S.NOT_STARTED}),
    _S.STOPPING: frozenset({_S.WAITING, _S.STOPPED, _S.NOT_STARTED}),
    _S.STOPPED: frozenset({_S.RUNNING, _S.NOT_STARTED}),
}


def transition(path: str, old: Status, new: Status) -> Status:
    """``new`` if a child at ``path`` may go there from ``old``; else ``IllegalTransition``."""
    if old is not new and new not in TRANSITIONS[old]:
        raise IllegalTransition(path, old, new)
    return new


@dataclass(frozen=True, slots=True)
class ChildState:
    """A snapshot of one child.

    ``retry_at`` is on the Trio clock (``trio.current_time()``) and
    ``retry_in`` is the seconds left when the snapshot was taken, so a user
    interface can show a wall-clock time: ``datetime.now() + timedelta(seconds=retry_in)``.
    """

    name: str
    path: str
    status: Status
    retry_at: float | None
    retry_in: float | None
    restarts: int  #: restarts since the child was added
    attempt: int  #: restarts in a row without a quiet period (drives the backoff)
    supervisor: bool  #: True for a nested supervisor

    @property
    def available(self) -> bool:
        return self.status is Status.RUNNING
