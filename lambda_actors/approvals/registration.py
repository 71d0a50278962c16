"""Agent registration (SPEC 7.2): the request, the record and its moves, pure.

An agent asks to exist; its owner approves or denies in Matrix. The asking
is an approval record (:mod:`.record`, source ``registration``) shown and
decided by the approvals gate like any other; this record is what the
registration became:

- ``pending`` while its approval is pending;
- ``approved`` once the approval is approved *and* the agent is set up (its
  DID, started under ``node/agents``, its room made); ``denied``,
  ``expired``, ``cancelled`` as its approval ended (no answer means no);
- ``deregistered`` after ``DELETE /api/v1/agents/{did}``; the record is kept.

The table below is the whole rule; a move not in it is an
:class:`IllegalRegistrationMove`. :func:`parse` checks a request body and
never raises: it returns the request or every problem at once, each with
its field. The agent's fields are checked by the same code that checks an
``agents.yaml`` entry (:func:`~lambda_actors.bot.config.check_agent_entry`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

from ..bot.config import AgentConfig, check_agent_entry
from .record import Approval, Status, iso
from .request import (
    MAX_REQUEST_ID,
    Problem,
    callback_field,
    text_field,
    timeout_field,
    unknown_fields,
    user_field,
)

__all__ = [
    "DID_PREFIX",
    "IllegalRegistrationMove",
    "RegStatus",
    "Registration",
    "RegistrationRequest",
    "move",
    "new_did",
    "new_registration_id",
    "outcome",
    "parse",
    "registration_action",
]

DID_PREFIX = "did:lambda:agent:"
_FIELDS = ("request_id", "owner", "label", "base_url", "workspace_path", "timeout_s", "callback_url")
#: The id an agent entry is checked with before it has its DID (the DID is
#: minted only on approval, and is always a valid agent id).
_PLACEHOLDER_ID = DID_PREFIX + "00000000-0000-4000-8000-000000000000"


class RegStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    DEREGISTERED = "deregistered"


#: status -> the statuses it may move to.
MOVES: dict[RegStatus, frozenset[RegStatus]] = {
    RegStatus.PENDING: frozenset({RegStatus.APPROVED, RegStatus.DENIED, RegStatus.EXPIRED, RegStatus.CANCELLED}),
    RegStatus.APPROVED: frozenset({RegStatus.DEREGISTERED}),
}

#: What a final approval makes of its registration.
_OUTCOME = {
    Status.APPROVED: RegStatus.APPROVED,
    Status.DENIED: RegStatus.DENIED,
    Status.EXPIRED: RegStatus.EXPIRED,
    Status.CANCELLED: RegStatus.CANCELLED,
}


class IllegalRegistrationMove(Exception):
    def __init__(self, registration_id: str, current: RegStatus, wanted: RegStatus) -> None:
        super().__init__(f"{registration_id}: cannot move from {current} to {wanted}")
        self.current = current


@dataclass(frozen=True)
class RegistrationRequest:
    owner: str
    agent: AgentConfig  #: checked as an agents.yaml entry; its id is a placeholder until approval
    request_id: str | None = None
    timeout_s: int = 600
    callback_url: str | None = None

    @property
    def fingerprint(self) -> str:
        """The request's content, hashed: the same ``request_id`` with another body is a conflict."""
        canonical = json.dumps(
            [self.owner, self.agent.label, self.agent.base_url, str(self.agent.workspace_path), self.timeout_s,
             self.callback_url],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Registration:
    id: str
    client: str
    request_id: str | None
    fingerprint: str
    owner: str
    label: str
    base_url: str
    workspace_path: str
    approval_id: str  #: the approval record the owner answers
    created_at: float
    expires_at: float
    callback_url: str | None = None
    status: RegStatus = RegStatus.PENDING
    agent_did: str | None = None  #: minted when the approval is seen approved
    room_id: str | None = None  #: the agent's dedicated room, once made
    decided_by: str | None = None
    decided_at: float | None = None
    deregistered_at: float | None = None

    @property
    def final(self) -> bool:
        return self.status is not RegStatus.PENDING

    def agent(self) -> AgentConfig:
        """The agent as the node serves it (approved registrations only)."""
        assert self.agent_did is not None
        entry = check_agent_entry(
            {"id": self.agent_did, "label": self.label, "base_url": self.base_url, "workspace_path": self.workspace_path}
        )
        if isinstance(entry, list):  # checked when registered; a stored row is ours
            raise ValueError(f"registration {self.id}: stored agent entry is invalid: {entry}")
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": str(self.status),
            "request_id": self.request_id,
            "owner": self.owner,
            "label": self.label,
            "base_url": self.base_url,
            "workspace_path": self.workspace_path,
            "approval_id": self.approval_id,
            "agent_did": self.agent_did,
            "room_id": self.room_id,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "decided_by": self.decided_by,
            "decided_at": iso(self.decided_at) if self.decided_at is not None else None,
            "deregistered_at": iso(self.deregistered_at) if self.deregistered_at is not None else None,
        }


def move(registration: Registration, status: RegStatus, **changes: Any) -> Registration:
    """The record after a move; :class:`IllegalRegistrationMove` if the table forbids it."""
    if status not in MOVES.get(registration.status, frozenset()):
        raise IllegalRegistrationMove(registration.id, registration.status, status)
    return replace(registration, status=status, **changes)


def outcome(approval: Approval) -> RegStatus:
    """What a final approval makes of its registration."""
    assert approval.final
    return _OUTCOME[approval.status]


def registration_action(label: str, base_url: str, workspace_path: str) -> str:
    """What the owner is asked (the prompt's action line)."""
    return f'Register a new agent "{label}" ({base_url}, workspace {workspace_path}) and give it a room in your Space'


def new_registration_id() -> str:
    return f"reg_{uuid.uuid4()}"


def new_did() -> str:
    return f"{DID_PREFIX}{uuid.uuid4()}"


def parse(body: dict[str, Any]) -> RegistrationRequest | list[Problem]:
    problems: list[Problem] = []
    unknown_fields(body, _FIELDS, problems)
    request_id = text_field(body, "request_id", problems, required=False, limit=MAX_REQUEST_ID)
    owner = user_field(body, "owner", problems)
    for name in ("label", "base_url", "workspace_path"):
        if name not in body:
            problems.append(Problem(name, f"missing; {name} is required"))
    entry = {name: body[name] for name in ("label", "base_url", "workspace_path") if name in body}
    workspace = entry.get("workspace_path")
    if isinstance(workspace, str) and workspace.strip() and workspace[0] not in "~/":
        # agents.yaml resolves a relative path against its own folder; a
        # request has no folder, so it must say where.
        problems.append(Problem("workspace_path", "must be an absolute path, e.g. /agents/9"))
        del entry["workspace_path"]
    agent = None
    checked = check_agent_entry({"id": _PLACEHOLDER_ID, **entry})
    if isinstance(checked, list):
        # Missing keys are reported above, by their own names.
        problems += [Problem(key, problem) for key, problem in checked if key not in ("", "top level")]
    else:
        agent = checked
    timeout_s = timeout_field(body, problems)
    callback_url = callback_field(body, problems)
    if problems or owner is None or agent is None:
        return problems
    return RegistrationRequest(owner, agent, request_id, timeout_s, callback_url)
