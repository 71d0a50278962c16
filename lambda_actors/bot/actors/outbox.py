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
message is skipped: the newer one carries the whole text anyway. A room's
sender exits after :data:`SENDER_IDLE_EXIT` with nothing to send.

Nobody waits for the outbox: :func:`tell_outbox` never blocks, and the
outbox rescans the store for rows it was not told about.

Every send is counted by its result, and a sent one by what it carries
(:func:`count_sent`): the last send of an answer (``org.lambda.done``) is a
completed answer, one carrying ``org.lambda.error`` an error of that kind.
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
from ...node.metrics import BotCounters
from ...runtime.errors import ActorStopped, MailboxFull
from .services import DONE_KEY, ERROR_KEY, ERROR_KINDS, OUTBOX_PATH

#: Stored as the "event id" of a send that will never happen, so edits of it
#: are skipped and it is not retried after a restart.
NOT_SENT = ""


#: A per-room sender with nothing to send for this long exits (the next send
#: to its room starts a new one), so rooms that went quiet cost nothing.
SENDER_IDLE_EXIT = 60.0
#: How often the outbox looks in the store for rows nobody told it about
#: (a :class:`Queued` refused by its full mailbox).
RESCAN_INTERVAL = 5.0


@dataclass(frozen=True)
class Queued:
    """These rows were just written to the store's outbox: send them."""

    items: tuple[OutboxItem, ...]


async def tell_outbox(ctx: Any, queued: list[OutboxItem]) -> None:
    """Hand rows just written to the store's outbox to the outbox actor.

    Async for its callers' sake, but never waits, so a room or connection never blocks on the outbox, even
    while it restarts. Nothing can be lost by not waiting: the rows are in
    the store already, which is the real queue. If the outbox's mailbox is
    full, or the outbox is between incarnations and its mailbox full, the
    outbox finds the rows at its next rescan of the store (within
    :data:`RESCAN_INTERVAL`) or when it starts; if it stopped for good (the
    bot is stopping), the next start sends them.
    """
    if not queued:
        return
    address = ctx.registry.get(OUTBOX_PATH)
    if address is None:
        return
    try:
        address.send_nowait(Queued(tuple(queued)))
    except (MailboxFull, ActorStopped):
        pass


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
    """The dispatched rows not yet sent (by seq), and a way to wait for none."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self._none = trio.Event()
        self._none.set()

    def add(self, seq: int) -> None:
        if not self.seqs:
            self._none = trio.Event()
        self.seqs.add(seq)

    def done(self, seq: int) -> None:
        self.seqs.discard(seq)
        if not self.seqs:
            self._none.set()

    async def wait_none(self) -> None:
        await self._none.wait()


async def outbox_actor(
    ctx: Any,
    store: Store,
    client: MatrixClient,
    counters: BotCounters | None = None,
    *,
    idle_exit: float = SENDER_IDLE_EXIT,
    rescan_interval: float = RESCAN_INTERVAL,
) -> None:
    """Send every outbox row, per room in order (module doc).

    The loop only moves rows into per-room queues: it never awaits anything
    but its own mailbox, so it drains its mailbox at memory speed whatever
    the homeserver does, and one room's slow or failing sends hold up only
    that room's sender task.
    """
    queues: dict[str, _RoomQueue] = {}
    unsent = _Unsent()
    # Counted into nothing anyone reads when the caller has no counters (tests).
    counted = counters if counters is not None else BotCounters()

    async with trio.open_nursery() as nursery:

        def dispatch(item: OutboxItem) -> None:
            # A row can come more than once: in a Queued message and from a
            # store scan (at start, or a rescan), or in a Queued message held
            # in the mailbox across a restart after the new incarnation sent
            # it. Dispatched-and-unsent rows are known here; sent ones are
            # known to the store.
            if item.seq in unsent.seqs:
                return
            queue = queues.get(item.room_id)
            if queue is None:
                queue = queues[item.room_id] = _RoomQueue()
                nursery.start_soon(_send_room, ctx, store, client, queues, item.room_id, queue, unsent, idle_exit, counted)
            unsent.add(item.seq)
            queue.push(item)

        def scan() -> None:
            for item in store.pending_sends():
                dispatch(item)

        scan()
        next_scan = trio.current_time() + rescan_interval
        while True:
            msg = None
            with trio.move_on_at(next_scan):
                try:
                    msg = await ctx.mailbox.receive()
                except trio.EndOfChannel:
                    break
            if msg is None:
                scan()
                next_scan = trio.current_time() + rescan_interval
            elif isinstance(msg, Queued):
                for item in msg.items:
                    if item.seq not in unsent.seqs and store.sent_event_id(item.txn_id) is None:
                        dispatch(item)
            else:
                ctx.log.warning("outbox.unknown_message", message=type(msg).__name__)
        # Stopping: what the other actors said last (an interrupted answer's
        # notice, say) goes out before we do, within our shutdown time; what
        # does not is still in the store for the next start.
        scan()
        await unsent.wait_none()
        nursery.cancel_scope.cancel()


async def _send_room(
    ctx: Any,
    store: Store,
    client: MatrixClient,
    queues: dict[str, _RoomQueue],
    room_id: str,
    queue: _RoomQueue,
    unsent: _Unsent,
    idle_exit: float,
    counters: BotCounters,
) -> None:
    while True:
        if not queue.items:
            queue.ready = trio.Event()
            with trio.move_on_after(idle_exit):
                await queue.ready.wait()
            if not queue.items:
                # Idle: leave. No checkpoint between this test and the
                # removal, so no row can be pushed to a queue nobody serves.
                del queues[room_id]
                return
            continue
        item = queue.items.popleft()
        result = "failed"
        try:
            result = await _send(ctx, store, client, queue, item)
        finally:
            unsent.done(item.seq)
            counters.sends.labels(result).inc()
        if result == "sent":
            count_sent(counters, item.content)


def count_sent(counters: BotCounters, content: dict[str, Any]) -> None:
    """Count a send the homeserver took by what it carries (module doc)."""
    error = content.get(ERROR_KEY)
    if error is not None:
        counters.error(error, ERROR_KINDS)
    elif content.get(DONE_KEY):
        counters.answers.inc()


async def _send(ctx: Any, store: Store, client: MatrixClient, queue: _RoomQueue, item: OutboxItem) -> str:
    """Send one row; the homeserver's answer (or its refusal) goes to the store.
    Returns the result it is counted under (``SEND_RESULTS``); raises when it
    must be tried again (counted as ``failed``)."""
    if queue.superseded(item):
        store.mark_sent(item.txn_id, NOT_SENT)
        return "skipped"
    content = item.content
    if item.replaces_txn is not None:
        target = store.sent_event_id(item.replaces_txn)
        if not target:
            ctx.log.warning("outbox.edit_without_target", txn_id=item.txn_id, target_txn=item.replaces_txn)
            store.mark_sent(item.txn_id, NOT_SENT)
            return "skipped"
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
        return "refused"
    store.mark_sent(item.txn_id, event_id)
    return "sent"
