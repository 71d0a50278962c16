"""An approval: the record that is the truth, and the moves it may make.

SPEC 7.1. A record is created ``pending`` and makes exactly one more move,
to a final status; nothing moves it again. The table below is the whole
rule (h11's ``_state.py`` style): a move not in it is an
:class:`IllegalMove`, so a second decision, a late expiry or a cancel after
an answer can never overwrite the first decision.

Times are Unix seconds (floats) inside, ISO 8601 UTC on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Approval",
    "IllegalMove",
    "Source",
    "Status",
    "Via",
    "decide",
    "iso",
]


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Via(enum.StrEnum):
    """How the decision was made."""

    REACTION = "reaction"
    COMMAND = "command"
    TIMEOUT = "timeout"
    API = "api"


class Source(enum.StrEnum):
    API = "api"  #: POSTed by an API client
    AGENT = "agent"  #: an agent's confirmation (SPEC section 4)
    #: an agent's registration (SPEC 7.2): ``agent_id`` is the registration's id
    REGISTRATION = "registration"


#: status -> the statuses it may move to, and how each move may be made.
MOVES: dict[Status, dict[Status, frozenset[Via]]] = {
    Status.PENDING: {
        Status.APPROVED: frozenset({Via.REACTION, Via.COMMAND}),
        Status.DENIED: frozenset({Via.REACTION, Via.COMMAND}),
        Status.EXPIRED: frozenset({Via.TIMEOUT}),
        Status.CANCELLED: frozenset({Via.API}),
    },
}


class IllegalMove(Exception):
    """A move the table does not allow (the record is final, or the way is wrong)."""

    def __init__(self, record_id: str, current: Status, wanted: Status, via: Via) -> None:
        super().__init__(f"{record_id}: cannot move from {current} to {wanted} by {via}")
        self.current = current


@dataclass(frozen=True)
class Approval:
    id: str
    source: Source
    client: str  #: the API client's name, or the agent id for agent confirmations
    request_id: str | None
    fingerprint: str  #: what the client asked, hashed: the same request_id with another body is a conflict
    approver: str
    agent_id: str
    action: str
    details: str | dict[str, Any] | None
    created_at: float
    expires_at: float
    callback_url: str | None = None
    room_id: str | None = None
    status: Status = Status.PENDING
    decided_by: str | None = None
    decided_at: float | None = None
    decided_via: Via | None = None

    @property
    def final(self) -> bool:
        return self.status is not Status.PENDING

    def counts_at(self, ts: float) -> bool:
        """Whether an answer given at ``ts`` (its ``origin_server_ts``) is in time:
        an answer sent while the node was down still counts if it was before
        the deadline."""
        return ts < self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return {
            "id": self.id,
            "status": str(self.status),
            "source": str(self.source),
            "request_id": self.request_id,
            "approver": self.approver,
            "agent_id": self.agent_id,
            "action": self.action,
            "details": self.details,
            "room_id": self.room_id,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "decided_by": self.decided_by,
            "decided_at": iso(self.decided_at) if self.decided_at is not None else None,
            "decided_via": str(self.decided_via) if self.decided_via is not None else None,
        }


def decide(record: Approval, status: Status, via: Via, at: float, by: str | None = None) -> Approval:
    """The record after a move; :class:`IllegalMove` if the table forbids it."""
    allowed = MOVES.get(record.status, {}).get(status, frozenset())
    if via not in allowed:
        raise IllegalMove(record.id, record.status, status, via)
    return replace(record, status=status, decided_by=by, decided_at=at, decided_via=via)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
