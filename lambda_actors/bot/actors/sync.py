"""The sync actor: long-polls ``/sync`` and fills the inbox.

Each batch's events and its ``next_batch`` token are stored in one
transaction (``Store.ingest``), and only then are the rooms woken. So the
token never runs ahead of what is stored, and a crash anywhere replays from
the last stored token: events already in the inbox are ignored, events not
yet handled are handled after the restart. Nothing is dropped by age.

On the very first start (no token), and after the database was lost, the
bot first rebuilds its room bindings from the rooms' own state
(:func:`rebuild_from_matrix`), and the first sync marks each room's history
up to the bot's own last message as handled: that much was answered before.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..store import RoomBinding
from ...matrix.client import BOT_SYNC_FILTER
from ...matrix.errors import MatrixError
from ...runtime.spec import ChildSpec
from .room import INVITE_TYPE, Wake, room_actor
from .services import BINDING_STATE, ROOMS_PATH, SPACE_STATE, BotServices


async def sync_actor(ctx: Any, bot: BotServices) -> None:
    store, client = bot.store, bot.client
    # Synapse answers an identical /sync request from a cache for a while; a
    # first sync after a lost database would get the previous first sync's
    # (empty) answer. A filter unique to this boot makes the request new. The
    # account-data type named in it does not exist, so nothing changes.
    filter_id = await client.create_filter(
        {
            **BOT_SYNC_FILTER,
            "account_data": {"types": [f"org.lambda.unused.{store.boot_id}"]},
            "room": {**BOT_SYNC_FILTER["room"], "timeline": {"limit": bot.timing.sync_timeline_limit}},
        }
    )
    token = store.sync_token()
    if token is None:
        await rebuild_from_matrix(ctx, bot)
    for room_id in store.rooms_with_unhandled():
        await wake_room(ctx, bot, room_id)
    while True:
        body = await client.sync(token, timeout_ms=bot.timing.sync_timeout_ms, filter_id=filter_id)
        entries = list(inbox_entries(body, bot.user_id, first_sync=token is None))
        if token is not None:
            entries = [*await fill_gaps(ctx, bot, body), *entries]
        token = body["next_batch"]
        for room_id in store.ingest(entries, token):
            await wake_room(ctx, bot, room_id)


async def fill_gaps(ctx: Any, bot: BotServices, body: dict[str, Any]) -> list[tuple[str, str, dict, bool]]:
    """Events a sync left out: a room whose timeline is ``limited`` had more
    events since the last sync than one sync carries. Page back through its
    history to the first event already in the inbox, so none is lost."""
    missing: list[tuple[str, str, dict, bool]] = []
    for room_id, room in (body.get("rooms") or {}).get("join", {}).items():
        timeline = room.get("timeline") or {}
        if not timeline.get("limited") or not isinstance(timeline.get("prev_batch"), str):
            continue
        older: list[dict[str, Any]] = []
        start, pages = timeline["prev_batch"], 0
        while start and pages < bot.timing.backfill_pages:
            page = await bot.client.messages(room_id, start=start, direction="b", limit=100)
            pages += 1
            chunk = [e for e in page.get("chunk", []) if isinstance(e, dict) and isinstance(e.get("event_id"), str)]
            known = next((i for i, e in enumerate(chunk) if bot.store.has_event(e["event_id"])), None)
            older.extend(chunk if known is None else chunk[:known])
            if known is not None or not chunk:
                break
            start = page.get("end")
        else:
            if start:
                ctx.log.warning("sync.gap_too_large", room_id=room_id, pages=pages, events=len(older))
        ctx.log.info("sync.gap_filled", room_id=room_id, events=len(older))
        missing.extend((e["event_id"], room_id, e, False) for e in reversed(older))
    return missing


async def wake_room(ctx: Any, bot: BotServices, room_id: str) -> None:
    """Tell the room actor (started if need be) that its inbox has news."""
    await room_address(ctx, bot, room_id).send(Wake())


def room_address(ctx: Any, bot: BotServices, room_id: str) -> Any:
    return ctx.registry.get_or_start(
        ("room", room_id),
        ctx.registry.supervisor(ROOMS_PATH),
        lambda: ChildSpec(room_id.replace("/", "%2F"), room_actor, args=(bot, room_id)),
    )


def inbox_entries(body: dict[str, Any], user_id: str, *, first_sync: bool) -> Iterator[tuple[str, str, dict, bool]]:
    """``(event_id, room_id, event, handled)`` for every event of a sync body, in order.

    Invitations have no timeline event in our room yet; they are stored as an
    ``org.lambda.invite`` event holding the invite section, keyed by the
    batch so that an invitation still pending after a crash comes round again
    (accepting it twice is harmless). On the first sync, the history of each
    room up to our own last event counts as handled.
    """
    rooms = body.get("rooms") if isinstance(body.get("rooms"), dict) else {}
    joined = rooms.get("join") if isinstance(rooms.get("join"), dict) else {}
    for room_id, room in joined.items():
        timeline = room.get("timeline", {}).get("events", []) if isinstance(room, dict) else []
        events = [e for e in timeline if isinstance(e, dict) and isinstance(e.get("event_id"), str)]
        answered_up_to = -1
        if first_sync:
            for index, event in enumerate(events):
                if event.get("sender") == user_id:
                    answered_up_to = index
        for index, event in enumerate(events):
            yield event["event_id"], room_id, event, index <= answered_up_to
    invited = rooms.get("invite") if isinstance(rooms.get("invite"), dict) else {}
    for room_id, invite in invited.items():
        if isinstance(invite, dict):
            event = {"type": INVITE_TYPE, "invite": invite}
            yield f"invite:{room_id}:{body.get('next_batch')}", room_id, event, False


async def rebuild_from_matrix(ctx: Any, bot: BotServices) -> None:
    """Restore room bindings and Spaces from the rooms' state events."""
    store, client = bot.store, bot.client
    restored = 0
    for room_id in await client.joined_rooms():
        try:
            binding = await client.get_state(room_id, BINDING_STATE)
            space = await client.get_state(room_id, SPACE_STATE)
        except MatrixError as exc:
            ctx.log.warning("sync.rebuild_room_failed", room_id=room_id, error=str(exc))
            continue
        if space and isinstance(space.get("owner"), str):
            store.set_user_space(space["owner"], room_id)
        if binding and _valid_binding(binding) and binding["agent_id"] in {a.id for a in bot.agents.agents}:
            store.ensure_chat_id_above(int(binding["chat_id"]))
            store.bind_room(
                RoomBinding(
                    room_id,
                    binding["owner"],
                    binding["agent_id"],
                    int(binding["chat_id"]),
                    str(binding.get("name") or ""),
                    binding.get("space_id") if isinstance(binding.get("space_id"), str) else None,
                    bool(binding.get("archived")),
                )
            )
            restored += 1
    if restored:
        ctx.log.info("sync.rebuilt_from_matrix", rooms=restored)


def _valid_binding(content: dict[str, Any]) -> bool:
    return (
        isinstance(content.get("owner"), str)
        and isinstance(content.get("agent_id"), str)
        and isinstance(content.get("chat_id"), int)
    )
