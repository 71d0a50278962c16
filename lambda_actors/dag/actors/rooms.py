"""Finding a node's status or heartbeat room by its alias, creating it if missing (SPEC 8.1, 8.2).

Idempotent across restarts and crashes without a marker: the alias is the
marker. A room created before a crash whose answer was lost is found by its
alias on the next try; two nodes racing to create it meet at the alias (the
loser joins the winner's room).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from ...bot.actors.services import SERVICE_STATE
from ...matrix.client import MatrixClient
from ...matrix.errors import MatrixError, MatrixFailure, RateLimited

__all__ = ["ensure_room", "ensure_room_patiently", "unless_stopped"]

T = TypeVar("T")


async def ensure_room(
    client: MatrixClient, room: str, *, name: str, topic: str, preset: str = "private_chat",
    power_levels: Mapping[str, Any] | None = None,
) -> str:
    """The id of ``room`` (an alias or a room id), joined; created with the alias if missing
    (``preset``: ``private_chat``, invitation only, or ``public_chat``, anyone may join;
    ``power_levels``: overrides of the room's power levels)."""
    if room.startswith("!"):
        return await client.join(room)
    try:
        return await client.join(room)
    except MatrixError as exc:
        if exc.status != 404:
            raise
    localpart = room[1:].split(":", 1)[0]
    # Marked as the node's own, so the chat side never takes it for a user's
    # lost direct chat when a run's owner writes in it (an approval's !yes).
    marker = {"type": SERVICE_STATE, "state_key": "", "content": {"kind": "dag"}}
    try:
        return await client.create_room(
            name=name, topic=topic, alias=localpart, preset=preset, initial_state=[marker], power_level_override=power_levels
        )
    except MatrixError as exc:
        if exc.errcode != "M_ROOM_IN_USE":
            raise
        # Someone (another incarnation, another node) made it meanwhile.
        return await client.join(room)


async def ensure_room_patiently(
    client: MatrixClient, room: str, log: Any, *, name: str, topic: str, preset: str = "private_chat",
    power_levels: Mapping[str, Any] | None = None, max_pause: float = 30.0,
) -> str:
    """:func:`ensure_room`, trying again while the homeserver is away or
    refuses: the room is needed before anything can be posted, and a
    homeserver outage is Matrix's fault, never a reason to crash-loop an
    actor into a park. The pause grows to ``max_pause``."""
    pause = 0.5
    while True:
        try:
            return await ensure_room(client, room, name=name, topic=topic, preset=preset, power_levels=power_levels)
        except MatrixFailure as exc:
            wait = max(pause, exc.retry_after_s) if isinstance(exc, RateLimited) else pause
            if isinstance(exc, MatrixError) and exc.status == 403:
                # Not Matrix being away: the room exists and this account may
                # not join it. Said plainly, for the operator; tried again
                # (slowly) in case someone invites us.
                log.error(
                    "dag.room_forbidden", room=room, error=str(exc),
                    fix="invite this node's Matrix account to the room, or name another room in node.toml",
                )
                pause = max_pause
            else:
                log.warning("dag.room_unavailable", room=room, error=str(exc), retry_in_s=round(wait, 1))
            await trio.sleep(wait)
            pause = min(max_pause, pause * 2)


async def unless_stopped(ctx: Any, work: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
    """Run ``work()`` while watching the actor's mailbox: ``(True, result)``
    when it finished, ``(False, None)`` when the actor was told to stop first
    (``work`` is then cancelled). What arrives meanwhile is dropped (pokes:
    the caller reads the store anyway). For an actor's start-up, which may
    wait on the homeserver for long, so a stop is never held up by it.
    """
    outcome: tuple[bool, T | None] = (False, None)
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while True:
                try:
                    await ctx.mailbox.receive()
                except trio.EndOfChannel:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        outcome = (True, await work())
        nursery.cancel_scope.cancel()
    return outcome
