"""The conversation between a room actor and a connection actor.

A room hands one user message at a time to the connection of its (agent,
chat) as :class:`Deliver`; the connection streams the answer into the room
and reports :class:`TurnDone` when the turn has ended, answered or failed.
While a turn is out, the owner's answer to an agent's confirmation travels
as :class:`ConfirmAnswer`. These three are the whole protocol between them.

A connection queues the Delivers it is sent (one per room at a time, from
each room sharing the chat) and answers them in order; every Deliver it took
ends in a TurnDone, answered or failed, never dropped or overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...runtime.address import Address


@dataclass(frozen=True)
class Deliver:
    """Send the user's message ``event_id`` to the agent and stream the answer.

    ``room`` is the room actor's address, told :class:`TurnDone` at the end.
    """

    event_id: str
    room_id: str
    text: str
    attachments: tuple[str, ...]
    room: Address


@dataclass(frozen=True)
class ConfirmAnswer:
    """The owner answered a confirmation.

    ``request_id`` is the confirmation's store key, ``<agent_id>/<chat_id>/<the
    agent's request id>`` (:func:`lambda_actors.bot.turn.confirmation_key`), as
    the room found it in the store: a connection takes only keys of its own
    turn, so no agent can answer or clear another's confirmation.
    """

    request_id: str
    approved: bool


@dataclass(frozen=True)
class TurnDone:
    """The connection finished the turn for ``event_id`` (answered or failed)."""

    event_id: str
