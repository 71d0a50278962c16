"""The approvals actor's conversation: what the HTTP API and the rooms ask it.

Every one is a ``call``: the caller needs the answer (the record, or the
verdict on an answer). The approvals actor never calls anyone back, so no
cycle of calls can wait on itself, and each caller waits only for its own
answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gate import Answer
from .request import ApprovalRequest

__all__ = ["Answered", "Cancel", "Conflict", "NotFound", "Read", "Submit", "Unservable"]


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


class Conflict(Exception):
    """The same ``request_id`` came with another body (HTTP 409)."""


class Unservable(Exception):
    """Valid, but the node cannot serve it (HTTP 422): an unknown agent, an
    approver it cannot reach."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(Exception):
    """No approval with that id (HTTP 404)."""
