"""Rooms the bot makes: a user's Space, a chat room bound to an agent.

One place for it, because three actors make rooms: a room actor
(onboarding an invitation, ``!new``), and the node's registry
(``lambda_actors/approvals/registry.py``: the dedicated room of a newly
registered agent, and a room for an approver who has none, SPEC 7.1/7.2).

**Replay-safe.** Every room made carries a marker derived from what caused
it in its initial state (``room_rules.creation_marker``); before creating,
the joined rooms the store does not know are searched for that marker, so
a crash between creating a room and recording it never makes a second one.

**Bound both ways.** A chat's binding is written to the store and to the
room's own state (``org.lambda.binding``), so a lost database can be
rebuilt from the homeserver (SPEC section 6).

The caller passes its ``ctx`` (for the log and the outbox) and the bot's
services; only the caller waits while the homeserver answers.
"""

from __future__ import annotations

import time
from typing import Any

from .. import room_rules as rules
from ..store import RoomBinding
from ...matrix.errors import MatrixError
from ...runtime.context import ActorContext
from .outbox import tell_outbox
from .services import BINDING_STATE, SPACE_STATE, BotServices, notice

__all__ = ["bind", "create_chat", "ensure_space", "find_created"]

# The owner's newest rooms checked for a creation marker: a room created just
# before a crash is among the newest (the hourly room limit bounds them).
_RECENT_ROOMS = 5


async def ensure_space(ctx: ActorContext, bot: BotServices, owner: str) -> str:
    """The owner's Space, made (and the owner invited) if they have none."""
    store = bot.store
    space_id = store.user_space(owner)
    if space_id is not None:
        return space_id
    marker = rules.creation_marker("space", owner)
    space_id = await find_created(bot, marker, [])
    if space_id is None:
        space_id = await bot.client.create_room(
            name=rules.space_name(owner),
            invite=[owner],
            space=True,
            initial_state=[
                rules.creation_state(marker),
                {"type": SPACE_STATE, "state_key": "", "content": {"owner": owner}},
            ],
        )
    else:
        ctx.log.info("room.space_found_after_crash", owner=owner, space_id=space_id)
    store.set_user_space(owner, space_id)
    return space_id


async def create_chat(
    ctx: ActorContext, bot: BotServices, owner: str, agent_id: str, space_id: str, name: str | None, marker: str
) -> RoomBinding:
    """A chat room in the owner's Space, the owner invited, bound to ``agent_id``
    and welcomed; the one made before a crash when ``marker`` finds it."""
    client, store = bot.client, bot.store
    mine = [b.room_id for b in store.user_rooms(owner) if b.space_id][-_RECENT_ROOMS:]
    room_id = await find_created(bot, marker, mine)
    if room_id is not None:
        bound = store.binding(room_id)
        ctx.log.info("room.chat_found_after_crash", owner=owner, room_id=room_id, bound=bound is not None)
        if bound is not None:
            return bound
        named = await _quiet_state(client, room_id, "m.room.name")
        name = (named or {}).get("name") or name or "Chat"
    else:
        name = name or f"Chat {store.next_chat_number(owner)}"
        room_id = await client.create_room(name=name, invite=[owner], initial_state=[rules.creation_state(marker)])
    await client.add_to_space(space_id, room_id)
    agent = bot.agents.agent(agent_id)
    binding = RoomBinding(room_id, owner, agent.id, store.new_chat_id(room_id), name, space_id)
    await bind(ctx, bot, binding, created_at=time.time())
    welcome = notice(room_id, "welcome", (room_id,), rules.chat_welcome(name, agent.label))
    # Cannot block a loop serving others: tell_outbox never waits.
    await tell_outbox(ctx, store.enqueue([welcome]))
    return binding


async def find_created(bot: BotServices, marker: str, also: list[str]) -> str | None:
    """A joined room carrying ``marker``: one created before a crash kept it from being recorded.

    Only rooms the store does not know (plus ``also``) can be it, so this
    costs one request and a state read per such room.
    """
    client, store = bot.client, bot.store
    known = {b.room_id for b in store.bindings()}
    known.update(s for u in bot.agents.user_agents if (s := store.user_space(u)) is not None)
    candidates = [*rules.unknown_rooms(await client.joined_rooms(), known), *also]
    markers = {room_id: await _quiet_state(client, room_id, rules.CREATED_STATE) for room_id in candidates}
    return rules.find_marked(markers, marker)


async def bind(ctx: ActorContext, bot: BotServices, binding: RoomBinding, *, created_at: float | None = None) -> None:
    """Record ``binding`` in the store and in the room's state."""
    bot.store.bind_room(binding, created_at=created_at)
    content = {
        "owner": binding.owner,
        "agent_id": binding.agent_id,
        "chat_id": binding.chat_id,
        "name": binding.name,
        "space_id": binding.space_id,
        "archived": binding.archived,
    }
    try:
        await bot.client.put_state(binding.room_id, BINDING_STATE, content)
    except MatrixError as exc:
        if exc.status != 403:
            raise
        # A room someone else created (a direct chat) may not let us set
        # state; the binding then lives in the database only.
        ctx.log.info("room.binding_not_mirrored", room_id=binding.room_id, error=exc.errcode)


async def _quiet_state(client: Any, room_id: str, event_type: str) -> Any:
    try:
        return await client.get_state(room_id, event_type)
    except MatrixError:
        return None
