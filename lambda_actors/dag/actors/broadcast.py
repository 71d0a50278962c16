"""The broadcaster: a node's DAG status, from the store's outbox to its status room (SPEC 8.1).

The run actors never talk to Matrix. Each transition writes its status
events into the store's outbox in the same transaction as the transition,
then pokes this actor (:func:`poke`, which never waits). The store is the
queue: this actor reads the unsent events in order, feeds them to the pure
:class:`~lambda_actors.dag.status.Batcher`, sends what it says, and marks
them sent. While Matrix is down or rate-limiting, events wait in the store
(only a bounded window of them is read into memory) and go out in order
when it is back; a run never waits for any of it.

Posted once, even across a crash:

- each send's transaction id is derived from the seq range it carries, so
  a retry within one incarnation is recognised by the homeserver;
- each send carries that range (``org.lambda.seq: [first, last]``), and a
  starting broadcaster reads the room's latest status event of ours and
  marks everything up to its ``last`` as sent: a send that reached the
  homeserver just before a crash is not posted again under a new batching.

Each run also gets its ``m.notice`` board (board.py): rendered from the
store whenever the run's events come through, posted once (transaction id
from the run id), then edited through the throttle; its event id is kept in
the store so a restarted node edits the same board.

Matrix failures are charged to Matrix: every homeserver call here waits and
tries again (the Batcher's and the throttle's backoff, or the
room-finding loop); none crashes the actor, so a homeserver outage never
parks it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from ...matrix.client import MatrixClient
from ...matrix.errors import MatrixError, MatrixFailure, RateLimited
from ...runtime.errors import ActorStopped, MailboxFull
from ...runtime.registry import Registry
from ..board import BoardThrottle, EditBoard, PostBoard, TaskRow, render
from ..status import (
    BATCH,
    OUTPUT_LIMIT,
    STATUS_EVENT_TYPES,
    TASK_OUTPUT,
    Batcher,
    LogicalEvent,
    Progress,
    SendEvent,
    canonical_size,
    task_output,
)
from ..store import DagStore, NotFound, StatusEvent
from .rooms import ensure_room_patiently, unless_stopped

__all__ = ["BROADCAST_KEY", "SEQ_KEY", "Poke", "broadcaster_actor", "poke", "status_txn_id"]

#: The registry key the broadcaster registers itself under (wherever the
#: node's tree starts it), so the run actors find it by name.
BROADCAST_KEY = "dag.broadcaster"
#: Content key of every status send: ``[first, last]``, the store seqs it carries.
SEQ_KEY = "org.lambda.seq"

#: At most this many events are read from the store into memory at once; the
#: rest wait in the store (a long outage costs disk, not memory).
WINDOW = 2000
#: How often the store is looked at without a poke (a poke lost to a full
#: mailbox or a restart costs at most this much delay).
RESCAN_INTERVAL = 2.0
#: How often the board of a running run is rendered again without news
#: (its running tasks' elapsed minutes move).
BOARD_REFRESH = 20.0
#: How long sent status events stay in the store, and how often older ones are dropped.
SENT_KEPT_S = 24 * 3600.0
PRUNE_INTERVAL = 3600.0
#: HTTP statuses of a status send refused for good (the event itself is
#: wrong: too large, not JSON); it is dropped, logged, so it cannot block
#: the queue behind it for ever. Anything else is tried again.
_REFUSED_FOR_GOOD = frozenset({400, 413})


@dataclass(frozen=True)
class Poke:
    """Status events were written to the store's outbox."""


def poke(registry: Registry) -> None:
    """Wake the broadcaster. Never blocks, never raises.

    Merged: a poke already waiting in the mailbox says all later ones would
    (the broadcaster reads everything new from the store anyway), so none is
    added while one waits. Nothing is lost by not waiting or not delivering:
    the events are in the store, and the broadcaster looks there at least
    every :data:`RESCAN_INTERVAL` and when it starts.
    """
    try:
        address = registry.get(BROADCAST_KEY)
        if address is None or address.statistics().depth > 0:
            return
        address.send_nowait(Poke())
    except (MailboxFull, ActorStopped):
        pass
    except Exception:  # noqa: BLE001 - a poke must never fail a run's transition
        pass


def status_txn_id(room_id: str, seqs: list[int]) -> str:
    """The transaction id of a status send carrying ``seqs`` (deterministic)."""
    digest = hashlib.sha256(f"{room_id}\x00{seqs[0]}\x00{seqs[-1]}\x00{len(seqs)}".encode()).hexdigest()[:32]
    return f"la.dag-status.{digest}"


@dataclass
class _Board:
    run_id: str
    throttle: BoardThrottle
    event_id: str | None
    edits: int = 0
    next_render: float = 0.0


@dataclass
class _State:
    """What one incarnation holds in memory (the store holds the truth)."""

    room_id: str
    batcher: Batcher
    #: id(event) -> its store seq, for the events the Batcher holds.
    seq_of: dict[int, int] = field(default_factory=dict)
    last_read: int = 0
    boards: dict[str, _Board] = field(default_factory=dict)
    #: Runs whose owner is still to be invited (the room id is recorded after).
    to_invite: set[str] = field(default_factory=set)
    known_runs: set[str] = field(default_factory=set)
    boot: str = ""
    #: The last read stopped at the window's limit: the store holds more.
    more_in_store: bool = False


async def broadcaster_actor(
    ctx: Any,
    client: MatrixClient,
    dag_store: DagStore,
    room: str,
    *,
    node_id: str = "",
    batch_interval_ms: int = 500,
    broadcast_output: bool = True,
    board_interval: float = 2.0,
    rescan_interval: float = RESCAN_INTERVAL,
    wall: Callable[[], float] = time.time,
) -> None:
    """Send the node's status events to ``room`` (an alias or id) and keep each run's board."""
    ctx.registry.register(BROADCAST_KEY, ctx.address)

    async def start() -> str:
        room_id = await ensure_room_patiently(
            client, room, ctx.log, name=f"DAG status {node_id}".strip(), topic="Status of the DAG runs of this node"
        )
        await _reconcile(ctx, client, dag_store, room_id)
        return room_id

    # Start-up waits on the homeserver as long as it is away; a stop meanwhile is not held up.
    started, found = await unless_stopped(ctx, start)
    if not started or found is None:
        return
    room_id = found
    state = _State(
        room_id,
        Batcher(f"dag.{node_id}", batch_interval_ms=batch_interval_ms),
        boot=f"{wall():.6f}",
    )
    for run in dag_store.unfinished_runs():
        _track_board(state, dag_store, run.run_id, board_interval)

    next_scan = -math.inf
    next_prune = trio.current_time() + PRUNE_INTERVAL
    while True:
        now = trio.current_time()
        due_now: list[SendEvent] = []
        if now >= next_scan:
            due_now = _read_store(state, dag_store, broadcast_output, board_interval, ctx.log)
            next_scan = now + rescan_interval
        if now >= next_prune:
            # The room has them; the store keeps a day of sent events for the API's sake.
            dag_store.forget_sent_status_events(wall() - SENT_KEPT_S)
            next_prune = now + PRUNE_INTERVAL
        await _invite_owners(ctx, client, dag_store, state)
        await _perform_sends(ctx, client, dag_store, state, due_now)
        await _perform_boards(ctx, client, dag_store, state, wall)
        if state.more_in_store and state.batcher.backlog < WINDOW // 2:
            next_scan = -math.inf  # catching up: read on as soon as there is room
        due = min(
            [t for t in (state.batcher.next_due(), _boards_due(state), next_scan) if t is not None],
            default=next_scan,
        )
        if state.to_invite:
            due = min(due, trio.current_time() + 5.0)
        with trio.move_on_at(due):
            try:
                await ctx.mailbox.receive()
            except trio.EndOfChannel:
                return
            next_scan = -math.inf  # poked: read the store now


# -- reading the store ------------------------------------------------------------------------


async def _reconcile(ctx: Any, client: MatrixClient, dag_store: DagStore, room_id: str) -> None:
    """Mark as sent what the room already has: up to the ``last`` seq of our
    newest status event (module doc). Tried until the homeserver answers."""
    me = client.user_id
    pause = 0.5
    while True:
        try:
            if me is None:
                me, _ = await client.whoami()
            body = await client.messages(
                room_id,
                limit=20,
                event_filter={"senders": [me], "types": sorted(STATUS_EVENT_TYPES | {BATCH})},
            )
            break
        except MatrixFailure as exc:
            ctx.log.warning("dag.broadcast.reconcile_failed", error=str(exc), retry_in_s=pause)
            await trio.sleep(pause)
            pause = min(30.0, pause * 2)
    last = 0
    for event in body.get("chunk", []):
        content = event.get("content") if isinstance(event, Mapping) else None
        seqs = content.get(SEQ_KEY) if isinstance(content, Mapping) else None
        if isinstance(seqs, list) and len(seqs) == 2 and all(isinstance(s, int) for s in seqs):
            last = max(last, seqs[1])
    if last:
        while True:
            done = [e.seq for e in dag_store.unsent_status_events(limit=1000) if e.seq <= last]
            if not done:
                break
            dag_store.mark_status_sent(done)
        ctx.log.info("dag.broadcast.reconciled", up_to_seq=last)


def _read_store(
    state: _State, dag_store: DagStore, broadcast_output: bool, board_interval: float, log: Any
) -> list[SendEvent]:
    """Feed the Batcher what the store has beyond what it holds (up to
    :data:`WINDOW`); the sends that became due (to be performed in order)."""
    held = state.batcher.backlog
    if held >= WINDOW:
        state.more_in_store = True
        return []
    now = trio.current_time()
    done: list[int] = []
    due: list[SendEvent] = []
    unsent = dag_store.unsent_status_events(limit=WINDOW - held, after=state.last_read)
    state.more_in_store = len(unsent) == WINDOW - held
    for stored in unsent:
        state.last_read = stored.seq
        if stored.run_id not in state.known_runs:
            _new_run(state, dag_store, stored.run_id, board_interval)
        board = state.boards.get(stored.run_id)
        if board is None:
            board = _track_board(state, dag_store, stored.run_id, board_interval)
        board.next_render = 0.0  # the run moved: render its board again
        event = _logical(stored, log)
        if event is None or (event.type == TASK_OUTPUT and not broadcast_output):
            done.append(stored.seq)
            continue
        state.seq_of[id(event)] = stored.seq
        # A send put() says is due is in flight for the Batcher from now on:
        # it must be performed (the loop does, before anything else).
        due += state.batcher.put(event, now)
        for replaced in state.batcher.replaced:
            done.append(state.seq_of.pop(id(replaced)))
        state.batcher.replaced.clear()
    if done:
        dag_store.mark_status_sent(done)
    return due


def _logical(stored: StatusEvent, log: Any) -> LogicalEvent | None:
    """The stored event as the Batcher takes it; None (dropped, logged) when it can never be sent."""
    content = stored.content
    if stored.type == TASK_OUTPUT and isinstance(content.get("output"), str):
        text = content["output"]
        if len(text.encode("utf-8", "replace")) > OUTPUT_LIMIT:
            # The whole is in the store (served by the API); the room gets the summary.
            at = _parse_time(content.get("timestamp"))
            return task_output(stored.run_id, str(content.get("task_id")), text, at=at)
    size = canonical_size({"type": stored.type, "content": content})
    if size > 60_000:
        log.error("dag.broadcast.event_too_large", seq=stored.seq, type=stored.type, size=size)
        return None
    return LogicalEvent(stored.type, content, size)


def _parse_time(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


def _new_run(state: _State, dag_store: DagStore, run_id: str, board_interval: float) -> None:
    state.known_runs.add(run_id)
    try:
        run = dag_store.run(run_id)
    except NotFound:
        return
    if run.room_id is None:
        state.to_invite.add(run_id)


def _track_board(state: _State, dag_store: DagStore, run_id: str, board_interval: float) -> _Board:
    board = state.boards.get(run_id)
    if board is None:
        try:
            event_id = dag_store.run(run_id).board_event_id
        except NotFound:
            event_id = None
        board = _Board(run_id, BoardThrottle(min_interval=board_interval, posted=event_id is not None), event_id)
        state.boards[run_id] = board
    return board


# -- Matrix ---------------------------------------------------------------------------------------


async def _invite_owners(ctx: Any, client: MatrixClient, dag_store: DagStore, state: _State) -> None:
    """Invite each new run's owner once, then record the run's room (which says "done")."""
    for run_id in sorted(state.to_invite):
        try:
            run = dag_store.run(run_id)
        except NotFound:
            state.to_invite.discard(run_id)
            continue
        if run.owner and run.owner.startswith("@"):
            try:
                await client.invite(state.room_id, run.owner)
            except MatrixError as exc:
                if exc.status >= 500 or isinstance(exc, RateLimited):
                    ctx.log.info("dag.broadcast.invite_later", run_id=run_id, error=str(exc))
                    return
                # Already in the room or invited (403), unknown user: nothing to do again.
                ctx.log.info("dag.broadcast.invite_refused", run_id=run_id, owner=run.owner, error=str(exc))
            except MatrixFailure as exc:
                ctx.log.info("dag.broadcast.invite_later", run_id=run_id, error=str(exc))
                return
        dag_store.set_run_room(run_id, state.room_id)
        state.to_invite.discard(run_id)


async def _perform_sends(
    ctx: Any, client: MatrixClient, dag_store: DagStore, state: _State, due: list[SendEvent]
) -> None:
    """Send what the Batcher says is due, one at a time, in order."""
    sends = due + state.batcher.tick(trio.current_time())
    while sends:
        send = sends.pop(0)
        sends += await _send_status(ctx, client, dag_store, state, send)


async def _send_status(ctx: Any, client: MatrixClient, dag_store: DagStore, state: _State, send: SendEvent) -> list[SendEvent]:
    seqs = [state.seq_of[id(event)] for event in send.events]
    content = {**send.content, SEQ_KEY: [seqs[0], seqs[-1]]}
    try:
        await client.send(state.room_id, send.event_type, content, status_txn_id(state.room_id, seqs))
    except MatrixFailure as exc:
        if isinstance(exc, MatrixError) and exc.status in _REFUSED_FOR_GOOD:
            ctx.log.error("dag.broadcast.refused", seqs=[seqs[0], seqs[-1]], error=str(exc))
        else:
            retry_after = exc.retry_after_s if isinstance(exc, RateLimited) else None
            ctx.log.warning("dag.broadcast.send_failed", seqs=[seqs[0], seqs[-1]], error=str(exc))
            return state.batcher.failed(send.txn_id, trio.current_time(), retry_after)
    dag_store.mark_status_sent(seqs)
    for event in send.events:
        state.seq_of.pop(id(event), None)
    return state.batcher.sent(send.txn_id, trio.current_time())


def _boards_due(state: _State) -> float | None:
    times = []
    for board in state.boards.values():
        times.append(board.next_render)
        due = board.throttle.next_due()
        if due is not None:
            times.append(due)
    return min(times) if times else None


async def _perform_boards(
    ctx: Any, client: MatrixClient, dag_store: DagStore, state: _State, wall: Callable[[], float]
) -> None:
    for run_id in list(state.boards):
        board = state.boards[run_id]
        now = trio.current_time()
        actions: list[PostBoard | EditBoard] = []
        if now >= board.next_render:
            content, final = _render(dag_store, run_id, wall())
            if content is None:
                del state.boards[run_id]
                continue
            actions = board.throttle.final(content, now) if final else board.throttle.show(content, now)
            board.next_render = math.inf if final else now + BOARD_REFRESH
        else:
            actions = board.throttle.tick(now)
        while actions:
            actions = await _board_action(ctx, client, dag_store, state, board, actions[0]) + actions[1:]
        if board.throttle.finished:
            del state.boards[run_id]
            state.known_runs.discard(run_id)


def _render(dag_store: DagStore, run_id: str, now: float) -> tuple[dict[str, Any] | None, bool]:
    try:
        run = dag_store.run(run_id)
    except NotFound:
        return None, False
    tasks = [TaskRow(t.task_id, str(t.status), t.attempts, t.started_at, t.finished_at) for t in dag_store.tasks(run_id)]
    progress = Progress(**dag_store.progress(run_id))
    return render(run_id, run.dag_id, str(run.status), tasks, progress, now), run.final


async def _board_action(
    ctx: Any, client: MatrixClient, dag_store: DagStore, state: _State, board: _Board, action: PostBoard | EditBoard
) -> list[PostBoard | EditBoard]:
    try:
        if isinstance(action, PostBoard):
            # One board per run, even if the answer to its post is lost in a crash.
            event_id = await client.send(state.room_id, "m.room.message", action.content, _board_txn(board.run_id, "post"))
            board.event_id = event_id
            dag_store.set_board_event(board.run_id, event_id)
        else:
            assert board.event_id is not None
            # Per incarnation and edit: a retry is recognised; an edit after a
            # restart is never mistaken for an older one with other content.
            txn = _board_txn(board.run_id, state.boot, str(action.txn_no))
            await client.edit(state.room_id, board.event_id, action.content, txn)
    except MatrixFailure as exc:
        ctx.log.warning("dag.board.send_failed", run_id=board.run_id, error=str(exc))
        return board.throttle.failed(trio.current_time())
    return board.throttle.sent(trio.current_time())


def _board_txn(*cause: str) -> str:
    return "la.dag-board." + hashlib.sha256("\x00".join(cause).encode()).hexdigest()[:32]

