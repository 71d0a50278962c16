"""The sync actor: long-polls ``/sync`` and fills the inbox.

Each batch's events and its ``next_batch`` token are stored in one
transaction (``Store.ingest``), and only then are the rooms woken. So the
token never runs ahead of what is stored, and a crash anywhere replays from
the last stored token: events already in the inbox are ignored, events not
yet handled are handled after the restart. Nothing is dropped by age.

**Intake never waits for a room.** One sync actor serves every room, so it
must never block on one room's mailbox: a room that is parked, or slow, and
flooded would otherwise stop intake for everybody. A wake is therefore sent
without waiting, and a full mailbox counts as "a wake is already pending"
(:func:`wake_room` says why that is safe).

On the very first start (no token), and after the database was lost, the
bot first rebuilds its room bindings from the rooms' own state
(:func:`rebuild_from_matrix`), trusting only state the bot itself wrote, and
the first sync marks each room's history up to the bot's own last message as
handled: that much was answered before.

Chat ids are never reused, even across a lost database: the bot keeps a
high-water mark of the ids it may have handed out in its account data on the
homeserver (:data:`CHAT_IDS_TYPE`), reserved ahead in blocks so that handing
out an id stays a synchronous store call; after a loss the sequence restarts
above that mark (:func:`plan_chat_ids`).

The sync actor also compacts the store every ``Timing.compaction_interval``
(``Store.compact`` documents what is kept).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import trio

from ..store import RoomBinding, Store
from ...matrix import events as ev
from ...matrix.client import BOT_SYNC_FILTER
from ...matrix.errors import MatrixFailure
from ...runtime.errors import ActorStopped, MailboxFull
from ...runtime.spec import ChildSpec
from .room import INVITE_TYPE, Wake, room_actor
from .services import BINDING_STATE, ROOMS_PATH, SPACE_STATE, BotServices

#: Account-data type holding ``{"reserved": N}``: every chat id the bot ever
#: handed out is at most N.
CHAT_IDS_TYPE = "org.lambda.chat_ids"
#: How many chat ids are reserved at a time; a new block is reserved when
#: fewer than half of one remain.
CHAT_ID_BLOCK = 100


async def sync_actor(ctx: Any, bot: BotServices) -> None:
    store, client = bot.store, bot.client
    # A first sync after a lost database starts from nothing: see create_filter.
    filter_id = await client.create_filter(
        {**BOT_SYNC_FILTER, "room": {**BOT_SYNC_FILTER["room"], "timeline": {"limit": bot.timing.sync_timeline_limit}}},
        unique=True,
    )
    token = store.sync_token()
    if token is None:
        await rebuild_from_matrix(ctx, bot)
    # Before any room can hand out a chat id.
    await reserve_chat_ids(ctx, bot, remote=await _remote_reservation(ctx, bot))
    for room_id in store.rooms_with_unhandled():
        wake_room(ctx, bot, room_id)
    next_compaction = trio.current_time()
    # The first sync of a run does not wait: it catches up with what came
    # while the bot was away at once, and tells /healthz that the homeserver
    # answers; the long-poll starts from the second.
    timeout_ms = 0
    while True:
        body = await client.sync(token, timeout_ms=timeout_ms, filter_id=filter_id)
        timeout_ms = bot.timing.sync_timeout_ms
        entries = list(inbox_entries(body, bot.user_id, first_sync=token is None))
        if token is not None:
            entries = [*await fill_gaps(ctx, bot, body), *entries]
        token = body["next_batch"]
        count_received(bot, entries)
        for room_id in store.ingest(entries, token):
            wake_room(ctx, bot, room_id)
        # Rooms handed out ids since the last batch: keep the reservation ahead.
        await reserve_chat_ids(ctx, bot)
        if trio.current_time() >= next_compaction:
            removed = store.compact(horizon=bot.timing.compaction_horizon)
            if any(removed.values()):
                ctx.log.info("sync.compacted", **removed)
            next_compaction = trio.current_time() + bot.timing.compaction_interval


async def fill_gaps(ctx: Any, bot: BotServices, body: dict[str, Any]) -> list[tuple[str, str, dict, bool]]:
    """Events a sync left out: a room whose timeline is ``limited`` had more
    events since the last sync than one sync carries. Page back through its
    history to the first event already in the inbox, so none is lost."""
    missing: list[tuple[str, str, dict, bool]] = []
    for membership, room_id, room in ev.sync_rooms(body):
        timeline = ev.raw_timeline(room)
        if membership != "join" or not timeline.limited or timeline.prev_batch is None:
            continue
        older: list[dict[str, Any]] = []
        start: str | None = timeline.prev_batch
        pages = 0
        while start and pages < bot.timing.backfill_pages:
            page = await bot.client.messages(room_id, start=start, direction="b", limit=100)
            pages += 1
            chunk = [e for e in page.get("chunk", []) if isinstance(e, dict) and isinstance(e.get("event_id"), str)]
            known = next((i for i, e in enumerate(chunk) if bot.store.has_event(e["event_id"])), None)
            older.extend(chunk if known is None else chunk[:known])
            if known is not None or not chunk:
                break
            end = page.get("end")
            start = end if isinstance(end, str) else None  # no "end": the start of the room
        else:
            if start:
                ctx.log.warning("sync.gap_too_large", room_id=room_id, pages=pages, events=len(older))
        ctx.log.info("sync.gap_filled", room_id=room_id, events=len(older))
        missing.extend((e["event_id"], room_id, e, False) for e in reversed(older))
    return missing


def wake_room(ctx: Any, bot: BotServices, room_id: str) -> None:
    """Tell the room actor (started if need be) that its inbox has news.

    Never waits, so it cannot block the sync loop, which serves every room.
    A full mailbox means a wake is already pending, and the wake is merged
    into it: that is safe because the room re-reads its whole inbox from the
    store after *every* message it takes from its mailbox (whatever the
    message) and on every start. A full mailbox holds at least one message
    the room has not taken yet, so the room will re-read the inbox after
    this wake's events were stored, and see them. A parked room's mailbox is
    kept for its next incarnation, which reads the inbox when it starts.
    """
    try:
        address = room_address(ctx, bot, room_id)
        address.send_nowait(Wake())
    except MailboxFull:
        pass  # merged into the pending wake (see above)
    except ActorStopped:
        # The room stopped for good (the tree is shutting down): its events
        # stay unhandled in the inbox, and the next start wakes it.
        ctx.log.info("sync.room_stopped", room_id=room_id)


def room_address(ctx: Any, bot: BotServices, room_id: str) -> Any:
    return ctx.registry.get_or_start(
        ("room", room_id),
        ctx.registry.supervisor(ROOMS_PATH),
        lambda: ChildSpec(room_id.replace("/", "%2F"), room_actor, args=(bot, room_id)),
    )


def count_received(bot: BotServices, entries: list[tuple[str, str, dict[str, Any], bool]]) -> None:
    """Count what users sent that the store has not seen yet (a sync or a
    history page repeating an event does not count it twice; the bot's own
    events and history marked handled on a first sync are not received)."""
    for event_id, _, event, handled in entries:
        if not handled and event.get("sender") != bot.user_id and not bot.store.has_event(event_id):
            bot.counters.received(event)


def inbox_entries(body: dict[str, Any], user_id: str, *, first_sync: bool) -> Iterator[tuple[str, str, dict, bool]]:
    """``(event_id, room_id, event, handled)`` for every event of a sync body, in order.

    The walk over the body is :func:`lambda_actors.matrix.events.sync_rooms`
    (the one ``parse_sync`` uses); the events are stored raw.

    Invitations have no timeline event in our room yet; they are stored as an
    ``org.lambda.invite`` event holding the invite section, keyed by the
    batch so that an invitation still pending after a crash comes round again
    (accepting it twice is harmless). On the first sync, the history of each
    room up to our own last event counts as handled.
    """
    for membership, room_id, room in ev.sync_rooms(body):
        if membership == "join":
            events = ev.raw_timeline(room).events
            answered_up_to = -1
            if first_sync:
                for index, event in enumerate(events):
                    if event.get("sender") == user_id:
                        answered_up_to = index
            for index, event in enumerate(events):
                yield event["event_id"], room_id, dict(event), index <= answered_up_to
        elif membership == "invite":
            event = {"type": INVITE_TYPE, "invite": dict(room)}
            yield f"invite:{room_id}:{body.get('next_batch')}", room_id, event, False


# -- rebuilding from Matrix ------------------------------------------------------


async def rebuild_from_matrix(ctx: Any, bot: BotServices) -> None:
    """Restore room bindings and Spaces from the rooms' state, after the
    database was lost (or on the very first start).

    Room state is writable by whoever has the power to, so only what the
    bot wrote itself is believed (:func:`trusted_state`); everything else is
    logged and ignored. A room that is not restored is simply unbound: its
    messages get no agent (a direct chat is adopted again on use).
    """
    store, client = bot.store, bot.client
    restored = ignored = 0
    # chat id -> room, of bindings already stored (a rebuild cut short by a
    # crash runs again) and restored so far.
    used = {b.chat_id: b.room_id for b in store.bindings()}
    for room_id in await client.joined_rooms():
        try:
            state = await client.room_state(room_id)
        except MatrixFailure as exc:
            ctx.log.warning("sync.rebuild_room_failed", room_id=room_id, error=str(exc))
            continue
        found = trusted_state(room_id, state, bot, used)
        for problem in found.ignored:
            ignored += 1
            ctx.log.warning("sync.rebuild_ignored", room_id=room_id, problem=problem)
        if found.space_owner is not None:
            store.set_user_space(found.space_owner, room_id)
        for chat_id in found.chat_ids_seen:
            # Ours, even if the binding is not restored: never hand it out again.
            store.ensure_chat_id_above(chat_id)
        if found.binding is not None:
            used[found.binding.chat_id] = room_id
            store.bind_room(found.binding)
            restored += 1
    ctx.log.info("sync.rebuilt_from_matrix", rooms=restored, ignored=ignored)


class TrustedState:
    """What a room's state says that the bot can believe (see :func:`trusted_state`)."""

    def __init__(self) -> None:
        self.binding: RoomBinding | None = None
        self.space_owner: str | None = None
        #: Chat ids the bot itself wrote into this room's state.
        self.chat_ids_seen: list[int] = []
        #: Why each ignored state event was ignored (for the log).
        self.ignored: list[str] = []


def trusted_state(
    room_id: str, state: Iterable[Any], bot: BotServices, used: Mapping[int, str]
) -> TrustedState:
    """The binding and Space marker of a room, from its full state events.

    Believed only when: the state event's sender is the bot; for a binding,
    the owner still maps to that same agent in agents.yaml and the chat id
    is a positive integer no other room uses (``used``: chat id -> room); for a
    Space, its owner is a user the bot serves. Pure: no I/O.
    """
    found = TrustedState()
    for event in state:
        event_type = getattr(event, "event_type", None)
        if event_type not in (BINDING_STATE, SPACE_STATE) or getattr(event, "state_key", None) != "":
            continue
        content = event.content
        if event.sender != bot.user_id:
            found.ignored.append(f"{event_type} written by {event.sender}, not by the bot")
            continue
        if event_type == SPACE_STATE:
            owner = content.get("owner")
            if isinstance(owner, str) and bot.agents.agent_for(owner) is not None:
                found.space_owner = owner
            else:
                found.ignored.append(f"{SPACE_STATE} for {owner!r}, a user the bot does not serve")
            continue
        owner, agent_id, chat_id = content.get("owner"), content.get("agent_id"), content.get("chat_id")
        if not (isinstance(owner, str) and isinstance(agent_id, str) and _positive_int(chat_id)):
            found.ignored.append(f"{BINDING_STATE} without a valid owner, agent_id and positive chat_id")
            continue
        found.chat_ids_seen.append(chat_id)
        agent = bot.agents.agent_for(owner)
        if agent is None or agent.id != agent_id:
            now = "nobody" if agent is None else agent.id
            found.ignored.append(f"{BINDING_STATE}: {owner} is now served by {now}, not {agent_id}")
            continue
        if used.get(chat_id, room_id) != room_id:
            found.ignored.append(f"{BINDING_STATE}: chat id {chat_id} is already another room's")
            continue
        space_id = content.get("space_id")
        found.binding = RoomBinding(
            room_id,
            owner,
            agent_id,
            chat_id,
            str(content.get("name") or ""),
            space_id if isinstance(space_id, str) else None,
            content.get("archived") is True,
        )
    return found


def _positive_int(value: Any) -> bool:
    # bool is an int in Python; a JSON true is no chat id. The upper bound
    # keeps a (bot-written, so only corrupt) id inside SQLite's integer range.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53


# -- the chat-id high-water mark -------------------------------------------------


def plan_chat_ids(high_water: int, local_reserved: int, remote_reserved: int | None, block: int = CHAT_ID_BLOCK) -> tuple[int, int | None]:
    """Decide ``(restart_above, reserve)`` for the chat-id sequence. Pure.

    ``high_water`` is the highest id the store handed out or restored;
    ``local_reserved`` the mark this database last wrote to account data;
    ``remote_reserved`` the mark found there now (None: not read this time).

    A remote mark above the local one was written by a database that is
    gone: the sequence must restart above it (``restart_above``; 0 means no
    change). ``reserve`` is the new mark to write, or None: a new block is
    reserved when fewer than half a block remain, and a mark the homeserver
    lost is written again.
    """
    remote = local_reserved if remote_reserved is None else remote_reserved
    restart_above = remote if remote > local_reserved else 0
    high = max(high_water, restart_above)
    reserved = max(local_reserved, remote)
    if reserved - high < block // 2:
        return restart_above, high + block
    if remote < reserved:
        return restart_above, reserved
    return restart_above, None


async def _remote_reservation(ctx: Any, bot: BotServices) -> int:
    content = await bot.client.get_account_data(CHAT_IDS_TYPE)
    reserved = (content or {}).get("reserved", 0)
    if not _positive_int(reserved):
        if content:
            ctx.log.warning("sync.chat_ids_mark_unreadable", content=str(content)[:200])
        return 0
    return reserved


async def reserve_chat_ids(ctx: Any, bot: BotServices, remote: int | None = None) -> None:
    """Keep the account data's mark ahead of the store's chat-id sequence."""
    store: Store = bot.store
    restart_above, reserve = plan_chat_ids(store.chat_id_high_water(), store.chat_ids_reserved(), remote)
    if restart_above:
        store.ensure_chat_id_above(restart_above)
        ctx.log.info("sync.chat_ids_restarted_above", mark=restart_above)
    if reserve is not None:
        await bot.client.put_account_data(CHAT_IDS_TYPE, {"reserved": reserve})
        store.set_chat_ids_reserved(reserve)
