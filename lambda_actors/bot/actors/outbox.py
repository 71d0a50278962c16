"""The outbox actor: every Matrix message the bot posts goes out through here.

Senders first write their sends to the store (``Store.enqueue`` or
``Store.finish``) and then tell the outbox with :class:`Queued`. The store is
the real queue: when this actor restarts it reloads every unsent row, so a
crash anywhere between "decided to say it" and "the homeserver has it" ends
with the message posted exactly once. Exactly once because each row carries a
transaction id derived from what caused it, and the homeserver answers a
repeated (device, transaction id) with the first event instead of a new one.

Order is kept per room (one sender task each), so an answer's edits never
overtake the answer. An edit still queued behind a newer edit of the same
message is skipped: the newer one carries the whole text anyway.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ..store import OutboxItem, Store
from ...matrix import content as contents
from ...matrix.client import MatrixClient
from ...matrix.errors import InvalidToken, MatrixError, RateLimited
from .services import OUTBOX_PATH

#: Stored as the "event id" of a send that will never happen, so edits of it
#: are skipped and it is not retried after a restart.
NOT_SENT = ""


@dataclass(frozen=True)
class Queued:
    """These rows were just written to the store's outbox: send them."""

    items: tuple[OutboxItem, ...]


async def tell_outbox(ctx: Any, queued: list[OutboxItem]) -> None:
    """Hand rows just written to the store's outbox to the outbox actor."""
    if queued:
        await ctx.registry.lookup(OUTBOX_PATH).send(Queued(tuple(queued)))


class _RoomQueue:
    def __init__(self) -> None:
        self.items: deque[OutboxItem] = deque()
        self.ready = trio.Event()

    def push(self, item: OutboxItem) -> None:
        self.items.append(item)
        self.ready.set()

    def superseded(self, item: OutboxItem) -> bool:
        return item.replaces_txn is not None and any(later.replaces_txn == item.replaces_txn for later in self.items)


class _Unsent:
    """How many dispatched rows are not yet sent, and a way to wait for none."""

    def __init__(self) -> None:
        self.count = 0
        self._none = trio.Event()
        self._none.set()

    def add(self) -> None:
        if self.count == 0:
            self._none = trio.Event()
        self.count += 1

    def done(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._none.set()

    async def wait_none(self) -> None:
        await self._none.wait()


async def outbox_actor(ctx: Any, store: Store, client: MatrixClient) -> None:
    queues: dict[str, _RoomQueue] = {}
    unsent = _Unsent()
    # A row can come twice: loaded from the store on start, and again in a
    # Queued message that was held in the mailbox across the restart. Only
    # rows loaded at start can, so only those are remembered.
    pending = store.pending_sends()
    loaded = {item.seq for item in pending}

    async with trio.open_nursery() as nursery:

        def dispatch(item: OutboxItem) -> None:
            queue = queues.get(item.room_id)
            if queue is None:
                queue = queues[item.room_id] = _RoomQueue()
                nursery.start_soon(_send_room, ctx, store, client, queue, unsent)
            unsent.add()
            queue.push(item)

        for item in pending:
            dispatch(item)
        async for msg in ctx.mailbox:
            if isinstance(msg, Queued):
                for item in msg.items:
                    if item.seq not in loaded:
                        dispatch(item)
            else:
                ctx.log.warning("outbox.unknown_message", message=type(msg).__name__)
        # Stopping: what the other actors said last (an interrupted answer's
        # notice, say) goes out before we do, within our shutdown time; what
        # does not is still in the store for the next start.
        await unsent.wait_none()
        nursery.cancel_scope.cancel()


async def _send_room(ctx: Any, store: Store, client: MatrixClient, queue: _RoomQueue, unsent: _Unsent) -> None:
    while True:
        if not queue.items:
            queue.ready = trio.Event()
            await queue.ready.wait()
            continue
        item = queue.items.popleft()
        try:
            await _send(ctx, store, client, queue, item)
        finally:
            unsent.done()


async def _send(ctx: Any, store: Store, client: MatrixClient, queue: _RoomQueue, item: OutboxItem) -> None:
    """Send one row; the homeserver's answer (or its refusal) goes to the store."""
    if queue.superseded(item):
        store.mark_sent(item.txn_id, NOT_SENT)
        return
    content = item.content
    if item.replaces_txn is not None:
        target = store.sent_event_id(item.replaces_txn)
        if not target:
            ctx.log.warning("outbox.edit_without_target", txn_id=item.txn_id, target_txn=item.replaces_txn)
            store.mark_sent(item.txn_id, NOT_SENT)
            return
        content = contents.edit(target, item.content)
    try:
        event_id = await client.send(item.room_id, item.event_type, content, item.txn_id)
    except (InvalidToken, RateLimited):
        # Not this message's fault: crash, and let the supervisor's
        # backoff (and the store, on restart) take it from here.
        raise
    except MatrixError as exc:
        if exc.status >= 500:
            raise
        # 4xx: the homeserver refuses this message for good (we left the
        # room, the content is too large, ...). Retrying cannot help.
        ctx.log.warning("outbox.refused", txn_id=item.txn_id, room_id=item.room_id, error=str(exc))
        store.mark_sent(item.txn_id, NOT_SENT)
        return
    store.mark_sent(item.txn_id, event_id)
