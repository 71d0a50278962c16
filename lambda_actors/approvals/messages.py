"""The approvals actor's conversation: what the HTTP API and the rooms ask it.

Every one is a ``call``: the caller needs the answer (the record, or the
verdict on an answer). The approvals actor never calls anyone back, so no
cycle of calls can wait on itself, and each caller waits only for its own
answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gate import Answer
from .record import Approval
from .request import ApprovalRequest

__all__ = ["Ask", "NoRoom", "Answered", "Cancel", "Confirm", "Conflict", "NotFound", "Read", "Submit", "Unservable", "Withdraw"]


@dataclass(frozen=True)
class Submit:
    """A client asks for an approval. Replies ``(record, created)``."""

    client: str
    #: The client's token, kept only to sign the callback (SPEC 7.1).
    token: str
    request: ApprovalRequest


@dataclass(frozen=True)
class Read:
    """The record, once final or after ``wait_s`` seconds (0: at once)."""

    approval_id: str
    wait_s: float = 0.0


@dataclass(frozen=True)
class Cancel:
    """Withdraw a pending request. Replies the record (final either way)."""

    approval_id: str


@dataclass(frozen=True)
class Answered:
    """A room saw an answer (✅/❌, a reply, ``!yes``/``!no``). Replies the
    gate's verdict (:mod:`.gate`): the room tells its user and marks the
    event handled."""

    room_id: str
    event_id: str
    answer: Answer


@dataclass(frozen=True)
class Confirm:
    """An agent's connection asks the room's owner to confirm an action
    (:mod:`.agent`). Replies the record: new and shown, or the one this id
    already names (a turn replayed after a crash), final or not."""

    approval_id: str
    agent_id: str
    room_id: str
    approver: str
    action: str
    details: str
    timeout_s: float


@dataclass(frozen=True)
class Withdraw:
    """A turn ended: withdraw ``agent_id``'s confirmations still pending in
    ``room_id`` (nobody waits for their answer). Replies how many."""

    room_id: str
    agent_id: str


@dataclass(frozen=True)
class Ask:
    """The node's registry asks an owner about their agent's registration
    (SPEC 7.2; :mod:`.registry`), the record made there (its room chosen).
    Replies the record: new and shown, or the one stored under its id."""

    record: Approval
    signing_key: str | None = None


class Conflict(Exception):
    """The same ``request_id`` came with another body (HTTP 409)."""


class Unservable(Exception):
    """Valid, but the node cannot serve it (HTTP 422): an unknown agent, an
    approver it cannot reach."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class NoRoom(Unservable):
    """The approver has no room with that agent yet: the registry makes one
    (SPEC 7.1 "Where it is asked") and the request is submitted again."""


class NotFound(Exception):
    """No approval with that id (HTTP 404)."""
