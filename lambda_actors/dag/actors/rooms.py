"""Finding a node's status or heartbeat room by its alias, creating it if missing (SPEC 8.1, 8.2).

Idempotent across restarts and crashes without a marker: the alias is the
marker. A room created before a crash whose answer was lost is found by its
alias on the next try; two nodes racing to create it meet at the alias (the
loser joins the winner's room).
"""

from __future__ import annotations

import math
from typing import Any

import trio

from ...matrix.client import MatrixClient
from ...matrix.errors import MatrixError, MatrixFailure, RateLimited

__all__ = ["ensure_room", "ensure_room_patiently"]


async def ensure_room(client: MatrixClient, room: str, *, name: str, topic: str) -> str:
    """The id of ``room`` (an alias or a room id), joined; created with the alias if missing."""
    if room.startswith("!"):
        return await client.join(room)
    try:
        return await client.join(room)
    except MatrixError as exc:
        if exc.status != 404:
            raise
    localpart = room[1:].split(":", 1)[0]
    try:
        return await client.create_room(name=name, topic=topic, alias=localpart, preset="private_chat")
    except MatrixError as exc:
        if exc.errcode != "M_ROOM_IN_USE":
            raise
        # Someone (another incarnation, another node) made it meanwhile.
        return await client.join(room)


async def ensure_room_patiently(
    client: MatrixClient, room: str, log: Any, *, name: str, topic: str, max_pause: float = 30.0
) -> str:
    """:func:`ensure_room`, trying again while the homeserver is away or
    refuses: the room is needed before anything can be posted, and a
    homeserver outage is Matrix's fault, never a reason to crash-loop an
    actor into a park. The pause grows to ``max_pause``."""
    pause = 0.5
    while True:
        try:
            return await ensure_room(client, room, name=name, topic=topic)
        except MatrixFailure as exc:
            wait = max(pause, exc.retry_after_s) if isinstance(exc, RateLimited) else pause
            log.warning("dag.room_unavailable", room=room, error=str(exc), retry_in_s=round(wait, 1))
            await trio.sleep(min(wait, math.inf))
            pause = min(max_pause, pause * 2)
