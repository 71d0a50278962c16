"""The conversation between a room actor and a connection actor.

A room hands one user message at a time to the connection of its (agent,
chat) as :class:`Deliver`; the connection streams the answer into the room
and reports :class:`TurnDone` when the turn has ended, answered or failed.
These two are the whole protocol between them: an agent's confirmation is
not theirs but the node's approvals' (the connection asks the gate and
waits for its verdict; the room hands the owner's answers to the gate).

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
class TurnDone:
    """The connection finished the turn for ``event_id`` (answered or failed)."""

    event_id: str
