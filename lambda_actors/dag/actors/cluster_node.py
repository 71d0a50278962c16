"""``node/dag-cluster``: this node's driver of several-node runs (SPEC 8.3), modes ``matrix`` and ``federation``.

A thin executor around the pure :class:`.cluster_brain.ClusterBrain`:

- **Rooms.** The heartbeat room (liveness, and who is who: a node's account
  is the one writing its ``cis.node.status``) and the network's one cluster
  room (node.toml ``[dag.cluster] room``, default
  ``#dag-cluster-default:<server>``), found or created by alias, joinable by
  every node (``public_chat``) and writable at level 0 for every ``cis.*``
  event and the state event ``cis.dag.run.coordinator``.
- **Start.** Reads the heartbeat room's state (accounts, liveness), makes a
  first sync (its token is where the live loop starts), then replays the
  cluster room's whole history forward (``/messages dir=f`` from the
  start) before acting: a restarted node knows what it leads, what it held
  and what ended. Events the live sync then delivers again are dropped by
  event id.
- **Its own sync loop** (filtered to the two rooms) feeds the brain in
  timeline order; a timeline the homeserver cut short (``limited``) is
  completed by paging back to the last event seen. Failures and successes
  of the sync are the observer's ``sync_failed`` / ``sync_ok``.
- **Posts** go through one ordered sender task: one Matrix event each,
  never batched, retried with the same transaction id and a growing pause
  (to 30 s) while Matrix is away; the brain's loop never waits on it. They
  are kept in memory only: the room is the durable record, and a node that
  dies loses its unsent writes, which the protocol tolerates (its claims and
  results never reach the room; its tasks are reassigned). A post with an
  attachment (an input or output too long for its event) uploads it to the
  content repository first and carries its ``mxc://`` URI.
- **Long outputs** named by ``output_url`` are downloaded before the brain
  reads their result, in the brain's loop: the brain must read the room in
  order, and the bytes are on the homeserver every run here waits on anyway.
- **Copies.** A task this node runs is the existing task actor
  (:func:`.task.task_actor`) under a small wrapper, started beside this
  actor as ``node/dag-cluster-task-<run>-<task>-<epoch>``; its chat id is
  ``dag.<run_id>.<task_id>.<epoch>`` (the attempt number the agent sees is
  the execution number, the epoch), its session ``<run_id>:<task_id>``; an
  input sent by ``input_url`` is downloaded by the copy before it starts.
  A confirmation asked by a copy of another node's run is denied (the owner
  is asked only on the node that has the run's status room).
- **Control.** The API's confirm, cancel, pause and resume of a run in
  these modes come here as calls (:class:`Confirm`, :class:`Control`).
  The leading node writes its runs to the DAG store through its public
  methods, so ``dag status`` and ``dag list`` show them there.

Why no send here can block a loop serving others: the brain's inputs are an
unbounded in-process channel written with ``send_nowait`` (the sync task,
the mailbox reader); copies report to this actor's mailbox, sized for many
more reports than it has copies; the sender's queue is a deque.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from ...matrix.client import MatrixClient
from ...matrix.errors import HomeserverUnavailable, InvalidToken, MatrixError, MatrixFailure, RateLimited
from ...matrix.events import OtherEvent, RoomBatch, SyncBatch, parse_events, parse_sync
from ...node.config import NodeConfig
from ...runtime.address import Address
from ...runtime.context import ActorContext
from ...runtime.errors import ActorError
from ...runtime.monitors import Down
from ...runtime.request import Request
from ...runtime.spec import ChildSpec
from .. import status as st
from ..heartbeat import HEARTBEAT, NODE_STATUS
from ..scheduler import RunStatus, RunStatusChanged, TaskStatus, TaskStatusChanged
from ..spec import DagSpec
from ..store import DagStoreError, IllegalMove, NotFound
from .cluster_brain import BrainAction, ClusterBrain, Post, Record, RoomEvent, RunOver, StartTask, StopTask
from .heartbeats import HEARTBEAT_ROOM_POWER
from .messages import AttemptFailed, AttemptSucceeded
from .rooms import ensure_room_patiently
from .services import ConfirmAsk, DagServices, Gate
from .task import Job, session_id_for, task_actor

__all__ = [
    "CLUSTER_MAILBOX",
    "CLUSTER_PATH",
    "CLUSTER_ROOM_POWER",
    "CatchingUp",
    "Confirm",
    "Control",
    "cluster_node_actor",
]

#: Where the node tree runs the driver.
CLUSTER_PATH = "node/dag-cluster"
#: Its mailbox: calls from the API and one report per copy (at most the node's slots at once).
CLUSTER_MAILBOX = 10_000
#: The cluster room's power levels: every node (its own account, level 0)
#: posts every cluster event and writes the coordinator state event.
CLUSTER_ROOM_POWER = {
    "events": {
        **HEARTBEAT_ROOM_POWER["events"],
        st.RUN_COORDINATOR: 0,
    },
    "events_default": 0,
    "state_default": 50,
}
#: The live sync's long-poll, and the most events one sync brings per room.
SYNC_TIMEOUT_MS = 10_000
TIMELINE_LIMIT = 500
#: A page of history on start.
REPLAY_PAGE = 500
#: Event ids remembered to drop what the live sync delivers again.
SEEN_LIMIT = 50_000
#: Copies' names start with this (a restarted driver stops its predecessor's).
COPY_PREFIX = "dag-cluster-task-"
#: The most a node downloads of an input or output the cluster room names by
#: URI (outputs are cut at st.UPLOAD_LIMIT before upload; an input quoting
#: several such outputs may be longer).
DOWNLOAD_LIMIT = 4 * st.UPLOAD_LIMIT


class CatchingUp(ActorError):
    """Asked before the driver has read the cluster room (the API's 503: retry)."""


# -- the calls it takes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Confirm:
    """A run confirmed on this node (a call; replies None, or fails with :class:`ClusterRefused`)."""

    run_id: str
    spec: DagSpec
    mode: str
    workers: tuple[str, ...]


@dataclass(frozen=True)
class Control:
    """``cancel``, ``pause`` or ``resume`` a run this node leads (a call)."""

    run_id: str
    what: str


@dataclass(frozen=True)
class _Report:
    """A copy's end (from its wrapper)."""

    run_id: str
    task_id: str
    epoch: int
    outcome: str
    output: str
    reason: str | None


@dataclass(frozen=True)
class _CopyDone:
    """A copy's task actor returned (the wrapper's own mailbox)."""


# -- the actor ----------------------------------------------------------------------------------


async def cluster_node_actor(
    ctx: ActorContext,
    client: MatrixClient,
    services: DagServices,
    node: NodeConfig,
    *,
    heartbeat_room: str,
    cluster_room: str,
    grace_s: float = 10.0,
    on_ready: Callable[[ClusterBrain], None] | None = None,
) -> None:
    """Drive this node's part of the cluster until stopped. ``on_ready`` is
    given the brain once caught up (metrics read its counts)."""
    services.registry = ctx.registry  # the API's calls find this actor through it
    log = ctx.log.bind(node_id=node.node_id)
    driver = _Driver(ctx, client, services, node, log, grace_s)
    driver.stop_orphans()
    started = await driver.start(heartbeat_room, cluster_room)
    if not started:
        return
    if on_ready is not None:
        on_ready(driver.brain)
    await driver.serve()


class _Driver:
    def __init__(
        self, ctx: ActorContext, client: MatrixClient, services: DagServices, node: NodeConfig, log: Any, grace_s: float
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.node = node
        self.log = log
        self.store = services.store
        self.watchers = services.watchers
        # Copies of other nodes' runs ask nobody (their status room is elsewhere).
        self.copy_services = dataclasses.replace(services, gate=_RemoteGate(services.gate, services.store))
        self.brain = ClusterBrain(
            node.node_id, client.user_id or "", accept_remote_tasks=node.dag.accept_remote_tasks,
            slots=node.dag.local.max_workers, allow_commands=node.dag.allow_commands,
            serves=lambda agent: services.agent_url(agent) is not None,
            retry_backoff_s=services.retry_backoff_s, grace_s=grace_s,
            heartbeat_interval_s=float(node.node_heartbeat.interval_secs),
        )
        self.inputs_send, self.inputs = trio.open_memory_channel[tuple[Any, ...]](math.inf)
        self.sender: _Sender | None = None
        self.heartbeat_room = ""
        self.cluster_room = ""
        self.since: str | None = None
        self.filter_id: str | None = None
        self.seen: dict[str, None] = {}
        self.copies: dict[tuple[str, str, int], str] = {}  #: (run, task, epoch) -> child name
        self.by_path: dict[str, tuple[str, str, int]] = {}
        self.refreshed_at = -math.inf
        self.away = False  #: the last sync failed
        self.settled_at = -math.inf

    # -- start ---------------------------------------------------------------------------------

    def stop_orphans(self) -> None:
        for state in self.ctx.supervisor.which_children():
            if state.name.startswith(COPY_PREFIX):
                self.ctx.supervisor.kill(state.name, "its cluster driver restarted")

    async def start(self, heartbeat_room: str, cluster_room: str) -> bool:
        """Rooms, accounts, the first sync and the history; False when stopped first."""
        outcome = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while True:
                    try:
                        msg = await self.ctx.mailbox.receive()
                    except trio.EndOfChannel:
                        nursery.cancel_scope.cancel()
                        return
                    if isinstance(msg, Request):
                        msg.fail(CatchingUp("the cluster driver is catching up with the cluster room; retry in a few seconds"))

            nursery.start_soon(watch)
            await self._catch_up(heartbeat_room, cluster_room)
            outcome = True
            nursery.cancel_scope.cancel()
        return outcome

    async def _catch_up(self, heartbeat_room: str, cluster_room: str) -> None:
        self.heartbeat_room = await ensure_room_patiently(
            self.client, heartbeat_room, self.log, name="Node heartbeats", topic="Liveness of the nodes",
            preset="public_chat", power_levels=HEARTBEAT_ROOM_POWER,
        )
        self.cluster_room = await ensure_room_patiently(
            self.client, cluster_room, self.log, name="DAG cluster", topic="Several nodes' DAG runs (SPEC 8.3)",
            preset="public_chat", power_levels=CLUSTER_ROOM_POWER,
        )
        self.sender = _Sender(self.client, self.cluster_room, f"dagc.{self.node.node_id}.{int(time.time() * 1000)}", self.log)
        await self._patiently("dag.cluster.catch_up", self._first_reads)
        self.log.info("dag.cluster.caught_up", runs=len(self.brain.runs), ended=len(self.brain.ended))

    async def _first_reads(self) -> None:
        await self._refresh_accounts(force=True)
        pause = 0.05
        while not self.brain.announced:
            # Nothing is posted before this node's own cis.node.status is in
            # the heartbeat room (its heartbeat actor writes it at start):
            # other nodes judge our posts by it, and must find it.
            bound = self.brain.accounts.get(self.node.node_id)
            if bound is not None and bound != self.client.user_id:
                self.log.error(
                    "dag.cluster.node_id_taken", account=bound,
                    fix="another account writes this node id's status; give this node another node_id in node.toml",
                )
            await trio.sleep(pause)  # waiting on another actor's write (no event to wait on across actors)
            pause = min(2.0, pause * 2)
            await self._refresh_accounts(force=True)
        self.filter_id = await self.client.create_filter(
            {
                "presence": {"types": []},
                "account_data": {"types": []},
                "room": {
                    "rooms": [self.heartbeat_room, self.cluster_room],
                    "timeline": {"limit": TIMELINE_LIMIT},
                    "state": {"lazy_load_members": True},
                    "ephemeral": {"types": []},
                    "account_data": {"types": []},
                },
            },
            unique=True,  # a node restarted within minutes must not get its last run's first sync
        )
        body = await self.client.sync(None, timeout_ms=0, filter_id=self.filter_id)
        first = parse_sync(body, self.client.user_id)
        now, wall = trio.current_time(), time.time()
        for room in first.rooms:
            if room.room_id == self.heartbeat_room:
                self._heartbeat_batch(room, now)
        # The history, from the room's start: the first sync's timeline is in it.
        token: str | None = None
        while True:
            page = await self.client.messages(self.cluster_room, start=token, direction="f", limit=REPLAY_PAGE)
            events = parse_events(self.cluster_room, page["chunk"])
            for event in events:
                if isinstance(event, OtherEvent) and self._new(event.event_id):
                    await self._known(event)
                    self._perform(self.brain.replay(await self._resolved(event), now, wall))
            end = page.get("end")
            if not page["chunk"] or not isinstance(end, str) or end == token:
                break
            token = end
        self.since = first.next_batch
        self._perform(self.brain.caught_up(trio.current_time()))

    async def _patiently(self, what: str, work: Any) -> None:
        pause = 0.5
        while True:
            try:
                await work()
                return
            except MatrixFailure as exc:
                self.log.warning(what, error=str(exc), retry_in_s=pause)
                await trio.sleep(pause)
                pause = min(30.0, pause * 2)

    # -- the loop ------------------------------------------------------------------------------------

    async def serve(self) -> None:
        assert self.sender is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sender.run)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._mailbox_loop)
            await self._brain_loop()
            nursery.cancel_scope.cancel()

    async def _mailbox_loop(self) -> None:
        async for msg in self.ctx.mailbox:
            self.inputs_send.send_nowait(("msg", msg))  # unbounded: never waits
        self.inputs_send.send_nowait(("stop",))

    async def _sync_loop(self) -> None:
        # Each sync tried once: the liveness observer must learn at once that
        # the homeserver went away (the client's own retries would hide a
        # restart shorter than them, and the offline events it fires when it
        # starts would then read as deaths). Tried again here, every 2 s at
        # most, so its return is noticed soon.
        client = self.client.trying_once()
        pause = 0.25
        while True:
            try:
                body = await client.sync(self.since, timeout_ms=SYNC_TIMEOUT_MS, filter_id=self.filter_id)
                batch = parse_sync(body, self.client.user_id)
            except MatrixFailure as exc:
                self.inputs_send.send_nowait(("sync_failed", str(exc)))
                await trio.sleep(pause)
                pause = min(2.0, pause * 2)
                continue
            pause = 0.25
            self.since = batch.next_batch
            self.inputs_send.send_nowait(("batch", batch))

    async def _brain_loop(self) -> None:
        while True:
            due = self.brain.next_due()
            item: tuple[Any, ...] | None = None
            with trio.move_on_at(math.inf if due is None else due):
                item = await self.inputs.receive()
            now, wall = trio.current_time(), time.time()
            if item is None:
                self._perform(self.brain.tick(now, wall))
                self._perform(self.brain.settle())
                continue
            kind = item[0]
            if kind == "stop":
                return
            if kind == "sync_failed":
                if not self.away:
                    self.log.info("dag.cluster.sync_failed", error=item[1])
                self.away = True
                self._perform(self.brain.sync_failed(now))
            elif kind == "batch":
                if self.away:
                    self.log.info("dag.cluster.sync_back")
                self.away = False
                await self._batch(item[1])
            elif kind == "msg":
                msg = item[1]
                if isinstance(msg, Request) and isinstance(msg.msg, Confirm):
                    if any(not self.brain.knows(w) for w in msg.msg.workers):
                        # A worker that announced itself since our last sync is known once read.
                        await self._refresh_accounts()
                self._message(msg, now, wall)
            self._perform(self.brain.tick(trio.current_time(), time.time()))
            if self.inputs.statistics().current_buffer_used == 0 or trio.current_time() - self.settled_at > 1.0:
                # Caught up with everything received (or busy for a second:
                # with the last whole sync, then): who leads is decided now.
                self.settled_at = trio.current_time()
                self._perform(self.brain.settle())

    async def _batch(self, batch: SyncBatch) -> None:
        now = trio.current_time()
        self._perform(self.brain.sync_ok(now))
        for room in batch.rooms:
            if room.room_id == self.heartbeat_room:
                self._heartbeat_batch(room, now)
        for room in batch.rooms:
            if room.room_id != self.cluster_room:
                continue
            events = list(room.timeline)
            if room.limited and room.prev_batch:
                events = await self._gap(room.prev_batch) + events
            for event in events:
                if isinstance(event, OtherEvent) and self._new(event.event_id):
                    await self._known(event)
                    self.log.debug("dag.cluster.read", type=event.event_type)
                    room_event = await self._resolved(event)
                    self._perform(self.brain.cluster_event(room_event, trio.current_time(), time.time()))

    async def _gap(self, prev_batch: str) -> list[Any]:
        """The events the homeserver left out before a limited timeline, oldest first:
        paged back until one already seen (or the room's start)."""
        missed: list[Any] = []
        token: str | None = prev_batch
        try:
            while token:
                page = await self.client.messages(self.cluster_room, start=token, direction="b", limit=REPLAY_PAGE)
                events = parse_events(self.cluster_room, page["chunk"])
                for event in events:
                    if event.event_id in self.seen:
                        return list(reversed(missed))
                    missed.append(event)
                end = page.get("end")
                if not page["chunk"] or not isinstance(end, str):
                    break
                token = end
        except MatrixFailure as exc:
            self.log.warning("dag.cluster.gap_unread", error=str(exc))
        return list(reversed(missed))

    def _heartbeat_batch(self, room: RoomBatch, now: float) -> None:
        for event in (*room.state, *room.timeline):
            if isinstance(event, OtherEvent) and event.event_type in (NODE_STATUS, HEARTBEAT):
                self._perform(self.brain.heartbeat_event(_room_event(event), now))

    def _new(self, event_id: str) -> bool:
        if event_id in self.seen:
            return False
        self.seen[event_id] = None
        if len(self.seen) > SEEN_LIMIT:
            del self.seen[next(iter(self.seen))]
        return True

    async def _known(self, event: OtherEvent) -> None:
        """Before judging an event by its sender: the heartbeat room's state
        read again when it names a node (or comes from an account) not known yet."""
        room_event = _room_event(event)
        named = self.brain.named_node(room_event)
        if named is not None:
            unknown = not self.brain.knows(named)
        else:
            unknown = event.event_type.startswith("cis.dag.") and self.brain.node_of(event.sender) is None
        if unknown:
            await self._refresh_accounts()

    async def _resolved(self, event: OtherEvent) -> RoomEvent:
        """The event as the brain reads it: a result whose output was too long
        for it gets its output back from ``output_url`` (one that cannot be
        read becomes a line saying so: the task's result stands)."""
        room_event = _room_event(event)
        content = event.content
        url = content.get("output_url")
        if event.event_type != st.TASK_RESULT or "output" in content or not isinstance(url, str):
            return room_event
        if not url.startswith("mxc://"):
            output = f"[the output was at {url!r}, not an mxc:// URI of the homeserver]"
        else:
            try:
                output = (await _download(self.client, url)).decode("utf-8", "replace")
            except MatrixFailure as exc:
                self.log.warning("dag.cluster.output_unread", url=url, error=str(exc))
                output = f"[the output at {url} could not be read: {exc}]"
        return dataclasses.replace(room_event, content={**content, "output": output})

    async def _refresh_accounts(self, *, force: bool = False) -> None:
        now = trio.current_time()
        self.refreshed_at = now
        try:
            state = await self.client.room_state(self.heartbeat_room)
        except MatrixFailure as exc:
            if force:
                raise
            self.log.info("dag.cluster.accounts_unread", error=str(exc))
            return
        for event in state:
            if isinstance(event, OtherEvent) and event.event_type == NODE_STATUS:
                self._perform(self.brain.heartbeat_event(_room_event(event), now))

    # -- messages ---------------------------------------------------------------------------------------

    def _message(self, msg: object, now: float, wall: float) -> None:
        if isinstance(msg, Request):
            try:
                match msg.msg:
                    case Confirm(run_id=run_id, spec=spec, mode=mode, workers=workers):
                        actions = self.brain.confirm(run_id, spec, mode=mode, workers=workers, wall=wall)
                        # Kept before it is posted: `dag status` knows the run at once.
                        self.store.create_run(spec, wall, run_id=run_id)
                        self._perform(actions)
                        self.log.info("dag.cluster.confirmed", run_id=run_id, mode=mode, workers=list(workers))
                    case Control(run_id=run_id, what=what):
                        self._perform(self.brain.control(run_id, what, now))
                    case other:
                        raise TypeError(f"the cluster driver does not take {other!r}")
            except Exception as exc:  # noqa: BLE001 - answered to the caller, who shows it
                msg.fail(exc)
                return
            msg.reply(None)
            return
        if isinstance(msg, _Report):
            key = (msg.run_id, msg.task_id, msg.epoch)
            self._forget_copy(key)
            self._perform(self.brain.finished(msg.run_id, msg.task_id, msg.epoch, msg.outcome, msg.output, msg.reason))
            return
        if isinstance(msg, Down):
            found = self.by_path.pop(msg.path, None)
            if found is None or found not in self.copies:
                return
            del self.copies[found]
            reason = "its copy ended without a result" if msg.reason in ("normal", "shutdown") else f"its copy crashed ({msg.reason})"
            self._perform(self.brain.finished(found[0], found[1], found[2], "failed", "", reason))

    # -- performing -----------------------------------------------------------------------------------

    def _perform(self, actions: Iterable[BrainAction]) -> None:
        for action in actions:
            if isinstance(action, Post):
                assert self.sender is not None
                self.sender.put(action)
            elif isinstance(action, StartTask):
                self._start_copy(action)
            elif isinstance(action, StopTask):
                self._stop_copy(action)
            elif isinstance(action, Record):
                self._record(action)
            elif isinstance(action, RunOver):
                self._closed(action)
        for event, fields in self.brain.notes:
            self.log.info(event, **fields)
        self.brain.notes.clear()

    def _start_copy(self, start: StartTask) -> None:
        key = (start.run_id, start.task_id, start.epoch)
        name = f"{COPY_PREFIX}{start.run_id}-{start.task_id}-{start.epoch}"
        job = Job(start.run_id, start.task, start.epoch, start.prompt, start.owner, self.ctx.address)
        try:
            address = self.ctx.supervisor.start_child(
                ChildSpec(
                    name, _copy_actor, args=(self.copy_services, job, self.ctx.address, self.client, start.input_url),
                    restart="temporary", shutdown=0,
                )
            )
        except (ActorError, Exception) as exc:  # noqa: BLE001 - a copy that cannot start is a failed attempt
            self.log.warning("dag.cluster.copy_not_started", run_id=start.run_id, task_id=start.task_id, error=str(exc))
            self._perform(self.brain.finished(start.run_id, start.task_id, start.epoch, "failed", "", "its copy could not start"))
            return
        self.copies[key] = name
        self.by_path[address.path] = key
        self.ctx.monitor(address)
        self.log.info("dag.cluster.copy_started", run_id=start.run_id, task_id=start.task_id, epoch=start.epoch)

    def _stop_copy(self, stop: StopTask) -> None:
        key = (stop.run_id, stop.task_id, stop.epoch)
        name = self.copies.get(key)
        self._forget_copy(key)
        if name is None:
            return
        self.log.info("dag.cluster.copy_stopped", run_id=stop.run_id, task_id=stop.task_id, epoch=stop.epoch, reason=stop.reason)
        try:
            self.ctx.supervisor.kill(name, stop.reason)
        except LookupError:
            pass

    def _forget_copy(self, key: tuple[str, str, int]) -> None:
        name = self.copies.pop(key, None)
        if name is None:
            return
        for path, found in list(self.by_path.items()):
            if found == key:
                del self.by_path[path]
                try:
                    self.ctx.demonitor(self.ctx.registry.lookup(path))
                except (ActorError, LookupError):
                    pass

    def _record(self, record: Record) -> None:
        """The leading node's store and watchers (``dag status``, ``dag list``, ``--follow``)."""
        store, run_id, change = self.store, record.run_id, record.change
        wall = time.time()
        try:
            try:
                store.run(run_id)
            except NotFound:
                store.publish(record.spec, f"cluster:{record.origin}", wall)
                store.create_run(record.spec, wall, run_id=run_id)
            if isinstance(change, RunStatusChanged):
                if store.run(run_id).status is RunStatus.CREATED and change.status is not RunStatus.RUNNING:
                    # Taken over: this node's scheduler never started the run, it carried it on.
                    store.set_run_status(run_id, RunStatus.RUNNING, wall)
                store.set_run_status(run_id, change.status, wall)
            elif isinstance(change, TaskStatusChanged):
                self._record_task(run_id, change, wall)
        except (IllegalMove, NotFound, DagStoreError, ValueError) as exc:
            # The store of a node that led before, or leads again, may be
            # behind or ahead of the room: the room is the record.
            self.log.debug("dag.cluster.store_behind", run_id=run_id, error=str(exc))
        self.watchers.publish(run_id, [record.event])
        if isinstance(change, RunStatusChanged) and change.status.final:
            self.watchers.end(run_id)

    def _closed(self, over: RunOver) -> None:
        """The run ended in the room: a record of it this node's store holds
        unfinished (it led the run before another node took it over) ends too."""
        try:
            record = self.store.run(over.run_id)
            if record.final:
                return
            wall = time.time()
            if record.status is RunStatus.CREATED:
                self.store.set_run_status(over.run_id, RunStatus.RUNNING, wall)
            self.store.set_run_status(over.run_id, RunStatus(over.how), wall)
        except (IllegalMove, NotFound, DagStoreError, ValueError):
            return  # not this node's run, or already as it ended
        self.watchers.end(over.run_id)

    def _record_task(self, run_id: str, change: TaskStatusChanged, wall: float) -> None:
        store, task_id = self.store, change.task_id
        current = store.task(run_id, task_id).status
        session_id = session_id_for(run_id, task_id)
        if change.status is TaskStatus.RUNNING:
            if current is not TaskStatus.RUNNING:
                store.start_attempt(run_id, task_id, wall, session_id=session_id)
        elif change.status is TaskStatus.PENDING:
            if current in (TaskStatus.RUNNING, TaskStatus.BLOCKED):
                store.finish(run_id, task_id, TaskStatus.PENDING, wall, reason=change.reason)
        elif change.status is TaskStatus.COMPLETED:
            if current is TaskStatus.PENDING:
                store.start_attempt(run_id, task_id, wall, session_id=session_id)
            store.finish(run_id, task_id, TaskStatus.COMPLETED, wall, output=change.output or "")
        elif change.status.final:
            store.finish(run_id, task_id, change.status, wall, reason=change.reason)


# -- a copy of a task ----------------------------------------------------------------------------------


async def _copy_actor(
    ctx: ActorContext, services: DagServices, job: Job, driver: Address, client: MatrixClient, input_url: str | None
) -> None:
    """The task actor of one copy, its result passed on to the driver with its
    run and epoch (the task actor's messages carry neither: it reports to
    this actor's own mailbox, ``job.run`` is this actor). An input too long
    for its assignment is downloaded first (``input_url``)."""
    job = dataclasses.replace(job, run=ctx.address)
    if input_url is not None:
        task_input, why = await _download_input(client, input_url)
        if task_input is None:
            with contextlib.suppress(ActorError):
                await driver.send(_Report(job.run_id, job.task.id, job.attempt, "failed", "", why))
            return
        job = dataclasses.replace(job, prompt=task_input.prompt or "")
    async with trio.open_nursery() as nursery:

        async def work() -> None:
            await task_actor(ctx, services, job)
            try:
                ctx.address.send_nowait(_CopyDone())
            except ActorError:
                pass

        nursery.start_soon(work)
        async for msg in ctx.mailbox:
            if isinstance(msg, AttemptSucceeded):
                report = _Report(job.run_id, job.task.id, job.attempt, "completed", msg.output, None)
            elif isinstance(msg, AttemptFailed):
                report = _Report(job.run_id, job.task.id, job.attempt, "failed", "", msg.reason)
            elif isinstance(msg, _CopyDone):
                break
            else:
                continue  # blocked / recovered: the coordinator's clock runs on (see docs/dag.md)
            try:
                # Told before the agent's socket finishes closing (dependents
                # need not wait for that). Awaited, but it holds up only this
                # copy: the driver's mailbox is sized far beyond its copies.
                await driver.send(report)
            except ActorError:
                pass  # the driver restarts: its successor reads the room and runs the task again
            break
        nursery.cancel_scope.cancel()


async def _download_input(client: MatrixClient, url: str) -> tuple[st.TaskInput | None, str]:
    """The task input at ``url``, or None and why (a failed attempt: the coordinator retries it)."""
    try:
        data = await _download(client, url)
        body = json.loads(data.decode("utf-8"))
    except (MatrixFailure, UnicodeDecodeError, ValueError) as exc:
        return None, f"its input at {url} could not be read: {exc}"
    task_input = st.parse_task_input(body)
    if task_input is None:
        return None, f"its input at {url} is not a task input"
    return task_input, ""


async def _download(client: MatrixClient, url: str) -> bytes:
    """An input or output the cluster room names by ``mxc://`` URI; waits out a
    homeserver that is away (its content repository is where the bytes are)."""
    pause = 0.5
    while True:
        try:
            return (await client.download(url, max_bytes=DOWNLOAD_LIMIT)).data
        except (HomeserverUnavailable, RateLimited) as exc:
            await trio.sleep(max(pause, getattr(exc, "retry_after_s", 0.0)))
            pause = min(30.0, pause * 2)


class _RemoteGate:
    """A copy's confirmation: asked on this node only for a run this node's store has
    (the run's status room is on the node that leads it); otherwise denied."""

    def __init__(self, inner: Gate | None, store: Any) -> None:
        self.inner = inner
        self.store = store

    async def decide(self, ctx: ActorContext, ask: ConfirmAsk) -> bool:
        if self.inner is None:
            return False
        try:
            self.store.run(ask.run_id)
        except NotFound:
            ctx.log.warning(
                "dag.cluster.confirm_denied", session_id=ask.session_id,
                advice="a task of another node's run cannot ask its owner from here; the answer is no",
            )
            return False
        return await self.inner.decide(ctx, ask)


# -- the sender -----------------------------------------------------------------------------------------


class _Sender:
    """Posts in order, one at a time, each retried as it was until the homeserver takes it."""

    def __init__(self, client: MatrixClient, room_id: str, prefix: str, log: Any) -> None:
        self.client = client
        self.room_id = room_id
        self.prefix = prefix
        self.log = log
        self.queue: deque[tuple[str, Post]] = deque()
        self._numbers = itertools.count(1)
        self._wake = trio.Event()
        self.sent = 0
        self.dropped = 0

    def put(self, post: Post) -> None:
        """Never waits."""
        self.queue.append((f"{self.prefix}.{next(self._numbers)}", post))
        self._wake.set()

    async def run(self) -> None:
        pause = 0.5
        while True:
            if not self.queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            txn_id, post = self.queue[0]
            try:
                if post.attachment is not None:
                    # Uploaded once: the URI replaces the attachment in the queue.
                    attachment = post.attachment
                    try:
                        uri = await self.client.upload(attachment.data, attachment.content_type)
                    except MatrixError as exc:
                        if isinstance(exc, RateLimited) or exc.status >= 500:
                            raise
                        # Refused for good (too large for this homeserver):
                        # the event goes without it and says so, so that its
                        # task still ends (a reader's attempt fails, or the
                        # result's output is this line).
                        self.log.error("dag.cluster.upload_refused", type=post.event_type, size=len(attachment.data),
                                       error=str(exc), fix="raise the homeserver's max_upload_size")
                        uri = f"refused by the homeserver: {exc}"
                    post = dataclasses.replace(post, content={**post.content, attachment.key: uri}, attachment=None)
                    self.queue[0] = (txn_id, post)
                if post.state_key is None:
                    await self.client.send(self.room_id, post.event_type, post.content, txn_id)
                else:
                    await self.client.put_state(self.room_id, post.event_type, post.content, post.state_key)
            except RateLimited as exc:
                await trio.sleep(max(pause, exc.retry_after_s))
                continue
            except (HomeserverUnavailable, InvalidToken) as exc:
                self.log.info("dag.cluster.post_waits", error=str(exc), retry_in_s=pause)
                await trio.sleep(pause)
                pause = min(30.0, pause * 2)
                continue
            except MatrixError as exc:
                if exc.status >= 500:
                    await trio.sleep(pause)
                    pause = min(30.0, pause * 2)
                    continue
                # Refused for good (too large, forbidden): never going to be
                # taken; the protocol treats it as a write that was lost.
                self.log.error("dag.cluster.post_refused", type=post.event_type, error=str(exc),
                               fix="check this node's account may write in the cluster room")
                self.dropped += 1
            except MatrixFailure as exc:
                self.log.info("dag.cluster.post_waits", error=str(exc), retry_in_s=pause)
                await trio.sleep(pause)
                pause = min(30.0, pause * 2)
                continue
            else:
                self.sent += 1
                self.log.debug("dag.cluster.posted", type=post.event_type, waiting=len(self.queue) - 1)
            pause = 0.5
            self.queue.popleft()


def _room_event(event: OtherEvent) -> RoomEvent:
    return RoomEvent(event.event_id, event.sender, event.event_type, event.content, event.state_key)
