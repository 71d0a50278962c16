"""What the DAG actors share: the store, the node's settings, the slot board,
the watchers of runs, and the seams to the rest of the node (agents, approvals,
the status broadcaster).

Everything here runs on the one Trio thread, and nothing in it awaits, so
the board and the watchers are plain objects the actors call synchronously:
a grant or an event can never be half-given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ...node.config import NodeConfig
from ...runtime.context import ActorContext
from ...runtime.registry import Registry
from ..slots import RunDemand, allocate
from ..spec import KnownAgents
from ..status import LogicalEvent
from ..store import DagStore
from ..scheduler import Scheduler

__all__ = ["ConfirmAsk", "DagServices", "Gate", "SlotBoard", "Watchers", "run_key", "WATCH_BUFFER"]

#: Steps of a run (each a batch of events) a watcher may fall behind by
#: before it is dropped (it reconnects and gets a fresh snapshot; a run never
#: waits for it).
WATCH_BUFFER = 256


def run_key(run_id: str) -> tuple[str, str]:
    """The registry key of a run's actor."""
    return ("dag-run", run_id)


@dataclass(frozen=True)
class ConfirmAsk:
    """A blocked task asks its run's owner (SPEC 8 "An agent task")."""

    run_id: str
    task_id: str
    attempt: int
    session_id: str
    agent_id: str
    owner: str | None
    request_id: str
    action: str
    details: str


class Gate(Protocol):
    """How a blocked task gets its owner's decision (True: approved)."""

    async def decide(self, ctx: ActorContext, ask: ConfirmAsk) -> bool: ...


class SlotBoard:
    """The node's task slots shared by its runs (``[dag.local] max_workers``).

    Each run actor joins with its scheduler; after every step it calls
    :meth:`allocate`, which hands the free slots to the ready tasks of all
    runs (:func:`..slots.allocate`: priority, then readiness). A grant is
    held here until the run takes it, and counts as a held slot meanwhile,
    so a slot is never granted twice.
    """

    def __init__(self, node_slots: int | None) -> None:
        self.node_slots = node_slots
        self._runs: dict[str, _Entry] = {}

    def join(self, run_id: str, scheduler: Scheduler, wake: Callable[[], None]) -> None:
        self._runs[run_id] = _Entry(scheduler, wake)

    def leave(self, run_id: str) -> None:
        if self._runs.pop(run_id, None) is not None:
            self.allocate()  # its slots are free for the others

    def take(self, run_id: str) -> list[str]:
        """The tasks granted to the run since it last took them (and clears its wake flag)."""
        entry = self._runs.get(run_id)
        if entry is None:
            return []
        granted, entry.granted = entry.granted, []
        entry.woken = False
        return granted

    def allocate(self, caller: str | None = None) -> None:
        """Grant the free slots. ``caller``, a run allocating in its own step,
        is not woken: it takes its grants at once."""
        demands = []
        for run_id, entry in self._runs.items():
            demand = entry.scheduler.demand(run_id)
            held = set(entry.granted)
            demands.append(
                RunDemand(
                    run_id, demand.priority, demand.max_workers, demand.holding + len(held),
                    [r for r in demand.ready if r.task_id not in held],
                )
            )
        for grant in allocate(self.node_slots, demands):
            entry = self._runs[grant.run_id]
            entry.granted.append(grant.task_id)
            if not entry.woken and grant.run_id != caller:
                entry.woken = True
                entry.wake()

    def holding(self) -> int:
        return sum(e.scheduler.holding() + len(e.granted) for e in self._runs.values())


@dataclass
class _Entry:
    scheduler: Scheduler
    wake: Callable[[], None]
    granted: list[str] = field(default_factory=list)
    woken: bool = False


class Watchers:
    """Local watchers of runs (the API's server-sent events).

    A run actor publishes the events of one step together, and each watcher
    gets them as one item of a bounded channel (read back one event at a
    time): the bound counts steps, not events, so a step of many events (a
    fan-out, a cancel of a thousand tasks, several reports folded into one
    step) never drops a watcher that keeps up with the run's steps.
    :meth:`publish` never waits: a watcher whose channel is full is dropped
    (its stream ends; it reconnects and gets a fresh snapshot), so a slow
    reader can never slow a run.
    """

    def __init__(self, buffer: int = WATCH_BUFFER) -> None:
        self.buffer = buffer
        self._by_run: dict[str, set[trio.MemorySendChannel[tuple[LogicalEvent, ...]]]] = {}

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[AsyncIterator[LogicalEvent]]:
        send, receive = trio.open_memory_channel[tuple[LogicalEvent, ...]](self.buffer)
        self._by_run.setdefault(run_id, set()).add(send)
        try:
            async with receive:
                yield _Feed(receive)
        finally:
            self._drop(run_id, send)

    def publish(self, run_id: str, events: list[LogicalEvent]) -> None:
        watchers = self._by_run.get(run_id)
        if not watchers or not events:
            return
        step = tuple(events)
        for send in list(watchers):
            try:
                # Never waits: a full channel drops the watcher instead.
                send.send_nowait(step)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(run_id, send)

    def end(self, run_id: str) -> None:
        """The run ended: every watcher's stream ends after what it was sent."""
        for send in list(self._by_run.get(run_id, ())):
            self._drop(run_id, send)

    def count(self, run_id: str) -> int:
        return len(self._by_run.get(run_id, ()))

    def _drop(self, run_id: str, send: trio.MemorySendChannel[tuple[LogicalEvent, ...]]) -> None:
        send.close()
        watchers = self._by_run.get(run_id)
        if watchers is not None:
            watchers.discard(send)
            if not watchers:
                del self._by_run[run_id]


class _Feed:
    """A watcher's events one at a time, from the steps its channel holds."""

    def __init__(self, receive: trio.MemoryReceiveChannel[tuple[LogicalEvent, ...]]) -> None:
        self._receive = receive
        self._held: deque[LogicalEvent] = deque()

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> LogicalEvent:
        if self._held:
            # The rest of a step already taken: no wait, but a cancelled
            # reader still stops here.
            await trio.lowlevel.checkpoint_if_cancelled()
            return self._held.popleft()
        try:
            step = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._held.extend(step[1:])
        return step[0]


def _nothing() -> None:
    pass


@dataclass
class DagServices:
    """What every DAG actor of the node is given."""

    store: DagStore
    node: NodeConfig
    #: An agent id or registered DID -> the agent's base URL (None: unknown).
    agent_url: Callable[[str], str | None]
    #: What a published DAG's agents are checked against (None: not checked).
    known_agents: KnownAgents | None = None
    #: How a blocked task asks its owner; None: every confirmation is denied.
    gate: Gate | None = None
    #: Whether a broadcaster sends this node's status events to Matrix. Only
    #: then are they kept in the store's status outbox: with nobody to send
    #: them (``local`` mode, broadcast off) they would pile up for ever.
    broadcasting: bool = False
    #: Called after each write that appended status events (the status
    #: broadcaster's poke; it must never wait).
    poke: Callable[[], None] = _nothing
    board: SlotBoard = field(init=False)
    watchers: Watchers = field(default_factory=Watchers)
    #: The scheduler's clock (monotonic) and the wall clock of the record.
    clock: Callable[[], float] = trio.current_time
    wall: Callable[[], float] = time.time
    #: The first retry's wait (SPEC 8: 5 s, doubling); tests shorten it.
    retry_backoff_s: float = 5.0
    #: Longest output of a command task kept, in bytes (the rest is cut).
    command_output_cap: int = 1024 * 1024
    #: Agent sockets a run may open ahead of their task's start (see
    #: actors/run.py); below 0: the node's slots; 0: none.
    warm_sockets: int = -1
    #: The tree's registry, known once the first DAG actor starts.
    registry: Registry | None = None

    def outbox(self, events: Iterable[LogicalEvent]) -> list[tuple[str, dict[str, object]]]:
        """What of ``events`` goes to the store's status outbox with the
        transition: all of them when the node broadcasts, none otherwise."""
        return [(e.type, dict(e.content)) for e in events] if self.broadcasting else []

    def __post_init__(self) -> None:
        self.board = SlotBoard(self.node.dag.local.max_workers)
        if self.warm_sockets < 0:
            self.warm_sockets = self.node.dag.local.max_workers
