"""The registry actor's conversation (``node/registry``, :mod:`.registry`).

The HTTP API calls it (it needs the answer); the approvals actor only pokes
it with :class:`Settle` (``send_nowait``: it never waits on the registry,
so no cycle of calls can form: the registry calls the approvals actor, never
the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registration import RegistrationRequest

__all__ = ["Deregister", "MakeRoom", "Register", "Settle", "Unavailable"]


@dataclass(frozen=True)
class Register:
    """A client asks for an agent (SPEC 7.2). Replies ``(registration, created)``."""

    client: str
    #: The client's token, kept only to sign the callback.
    token: str
    request: RegistrationRequest


@dataclass(frozen=True)
class MakeRoom:
    """An approval waits for an approver with no room with ``agent_id``: make
    them one in their Space (SPEC 7.1). Replies the room id."""

    user_id: str
    agent_id: str


@dataclass(frozen=True)
class Deregister:
    """``DELETE /api/v1/agents/{did}``. Replies the registration (deregistered)."""

    agent_did: str


@dataclass(frozen=True)
class Settle:
    """A registration's approval became final: look at the pending registrations."""


class Unavailable(Exception):
    """The homeserver did not answer (HTTP 503: retry later)."""
