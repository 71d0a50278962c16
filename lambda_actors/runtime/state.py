"""Where a child is in its life, as seen from outside (``Supervisor.child_state``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Status", "ChildState"]


class Status(enum.StrEnum):
    RUNNING = "running"  #: an incarnation is running (or about to, this tick)
    BACKING_OFF = "backing_off"  #: waiting out a backoff delay; messages are held
    PARKED = "parked"  #: intensity exhausted under ``park``; messages are held until ``retry_at``
    STOPPING = "stopping"  #: its supervisor is stopping it
    STOPPED = "stopped"  #: stopped for good; sends raise ``ActorStopped``


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
