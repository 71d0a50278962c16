"""One node's part in several-node runs, as a pure machine (SPEC 8.3): the cluster room in, actions out.

The driver (:mod:`.cluster_node`) feeds it what Matrix says and performs
what it answers; it does no I/O and reads no clock (``now`` is the
driver's monotonic clock, ``wall`` the time stamped on events). It wires
the machines of :mod:`..cluster`, :mod:`..cluster_worker` and
:mod:`..liveness` together exactly as ``tests/dag/test_dag_cluster_world.py``
does over a simulated timeline:

- **The cluster room** (one per network) holds every run's events, each
  with its ``run_id``. ``cis.dag.run.spec`` makes a run known (its first
  coordinator is the node that posted it); every other event is routed to
  its run: the node's :class:`~..cluster_worker.Worker` and the run's
  :class:`~..cluster.ClusterRun` (each with its ledger) read it in timeline
  order. Events of runs that ended are ignored.
- **Identity.** An event counts only if its Matrix sender is the account
  of the node it names (``assigned_by``, ``claimed_by``, ``reported_by``,
  ``revoked_by``, the coordinator's ``node_id``, the spec's ``node_id``);
  a final ``cis.dag.task.status`` and a run's end name no node: they are
  the sender's node's. A node's account is the one that wrote its
  ``cis.node.status`` in the heartbeat room first (a later writer of the
  same state key is an impostor: its writes are ignored and logged).
- **Catching up.** A (re)started node :meth:`replay` s the room's history
  (the ledgers learn it; nothing is done), then :meth:`caught_up` acts on
  where each run stands: a task this node won and had not finished runs
  again, what is assigned to it is claimed, a run it leads resumes.
- **Leading.** When caught up (:meth:`ClusterBrain.settle`, after a whole
  sync or a tick; never mid-batch), every run asks
  :func:`~..cluster.leadership`: the node named by the room leads (an
  in-memory :class:`~..scheduler.Scheduler`, restored from the ledger's
  facts, drives it); a coordinator declared dead is replaced by the live
  node with the lowest id, which writes ``cis.dag.run.coordinator`` with
  ``epoch + 1`` and leads once that is in the timeline.
- **Liveness** is the :class:`~..liveness.Observer` fed from the heartbeat
  room and this node's own sync; deaths reassign a dead node's tasks
  (:meth:`~..cluster.ClusterRun.node_down`).

- **Long inputs and outputs.** An input or output too long for its event
  (32 KiB) goes as an :class:`Attachment` of its post: the driver uploads
  it and the event carries its ``mxc://`` URI (``input_url``,
  ``output_url``); the driver reads results with their output back in.
- **Pause.** The leader posts the run's pause and resume
  (``cis.dag.run.paused`` / ``.started``); a node taking it over restores
  it paused when the coordinator's last word was a pause.

Actions: :class:`Post` (one room event each, in order), :class:`StartTask`
/ :class:`StopTask` (the local copy of a task), :class:`Record` (the
leading node's store and watchers: ``dag status`` and ``dag list``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import status as st
from ..cluster import (
    Assign,
    AttemptFailed as ClusterAttemptFailed,
    AttemptStarted,
    ClusterRun,
    Lead,
    Ledger,
    LedgerEvent,
    Mode,
    Revoke,
    Succeeded,
    TakeOver,
    leadership,
    task_ended,
)
from ..cluster_worker import Claim, PostResult, Run, Stop, Worker, WorkerAction
from ..heartbeat import HEARTBEAT, NODE_STATUS
from ..liveness import NodeAlive, NodeDead, Observer, ObserverAction
from ..scheduler import (
    Action,
    CancelAttempt,
    RunFinished,
    RunStatus,
    RunStatusChanged,
    Scheduler,
    StartAttempt,
    TaskStatusChanged,
    UnknownAttempt,
    UnknownTask,
    WakeAt,
)
from ..spec import DagSpec, DagSpecError, TaskSpec, parse_dag, render_prompt
from .task import session_id_for

__all__ = [
    "Attachment",
    "ClusterBrain",
    "ClusterRefused",
    "ClusterCounts",
    "Post",
    "Record",
    "RoomEvent",
    "RunOver",
    "StartTask",
    "StopTask",
    "BrainAction",
    "RUN_END_TYPES",
]

#: The run's end as the room shows it (from its coordinator only).
RUN_END_TYPES = {st.RUN_COMPLETED: "completed", st.RUN_FAILED: "failed", st.RUN_CANCELLED: "cancelled"}
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: What is cut off an output too long to upload (documented in docs/dag.md).
CUT_MARKER = "\n[cut: {n} more bytes; a task's output travels between nodes up to {limit} bytes]"


class ClusterRefused(ValueError):
    """A confirm or a control call this node cannot take (the message says the fix)."""


@dataclass(frozen=True)
class RoomEvent:
    """An event of the cluster or heartbeat room, as the driver read it."""

    event_id: str
    sender: str
    type: str
    content: Mapping[str, Any] = field(hash=False)
    state_key: str | None = None


@dataclass(frozen=True)
class Attachment:
    """Bytes too long for their event: uploaded first, their ``mxc://`` URI put in the content's ``key``."""

    key: str
    data: bytes = field(repr=False)
    content_type: str


@dataclass(frozen=True)
class Post:
    """Send one event to the cluster room (``state_key`` set: a state event);
    with an ``attachment``, upload it first."""

    event_type: str
    content: Mapping[str, Any] = field(hash=False)
    state_key: str | None = None
    attachment: Attachment | None = None


@dataclass(frozen=True)
class StartTask:
    """Run the local copy of ``task_id`` (execution ``epoch``); report it to :meth:`ClusterBrain.finished`."""

    run_id: str
    task_id: str
    epoch: int
    task: TaskSpec
    prompt: str
    owner: str | None
    #: The input is at this ``mxc://`` URI (too long for its assignment):
    #: downloaded first, its prompt replacing ``prompt``.
    input_url: str | None = None


@dataclass(frozen=True)
class StopTask:
    run_id: str
    task_id: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class Record:
    """The leading node writes this change of its run to its store (and its watchers)."""

    run_id: str
    spec: DagSpec
    change: TaskStatusChanged | RunStatusChanged
    event: st.LogicalEvent
    #: The node that first posted the run (who published it, for the store's record).
    origin: str


@dataclass(frozen=True)
class RunOver:
    """The run's end is in the room (``how``: completed, failed, cancelled): a
    store that still holds it unfinished (a node that led it before) closes it."""

    run_id: str
    how: str


BrainAction = Post | StartTask | StopTask | Record | RunOver


@dataclass
class ClusterCounts:
    """What /metrics shows (``lambda_dag_cluster_*``), summed over runs, ended ones too."""

    reassigned: int = 0
    stale_results_ignored: int = 0
    claims_lost: int = 0
    impostors: int = 0


@dataclass
class _Run:
    info: st.RunSpec
    spec: DagSpec
    cluster: ClusterRun
    scheduler: Scheduler | None = None
    took_over: set[int] = field(default_factory=set)
    wake_at: float | None = None
    #: Paused by its coordinator (``cis.dag.run.paused`` until ``.started``):
    #: a node taking the run over keeps it paused.
    paused: bool = False


class ClusterBrain:
    """See the module's docstring."""

    def __init__(
        self,
        node_id: str,
        account: str,
        *,
        accept_remote_tasks: bool,
        slots: int,
        allow_commands: bool = False,
        serves: Callable[[str], bool] = lambda agent: True,
        retry_backoff_s: float = 5.0,
        grace_s: float = 10.0,
        heartbeat_interval_s: float = 30.0,
    ) -> None:
        self.me = node_id
        self.allow_commands = allow_commands
        self.retry_backoff_s = retry_backoff_s
        self.worker = Worker(
            node_id, accept_remote_tasks=accept_remote_tasks, slots=slots,
            can_run=lambda offer: serves(offer.agent_type) if offer.agent_type else allow_commands,
        )
        self.observer = Observer(me=node_id, grace_s=grace_s, heartbeat_interval_s=heartbeat_interval_s)
        self.account = account
        #: node id -> its account, learnt from the heartbeat room only (this
        #: node's own too: every node judges every event by the same rule).
        self.accounts: dict[str, str] = {}
        self._nodes_of: dict[str, str] = {}
        self.runs: dict[str, _Run] = {}
        self.ended: dict[str, str] = {}  #: run id -> how it ended (its coordinator's word)
        self.replaying = True
        self.counts = ClusterCounts()
        self._live_seen: set[str] = set()
        #: Why events were ignored, for the driver's logs (emptied by it).
        self.notes: list[tuple[str, dict[str, Any]]] = []

    # -- who is who -------------------------------------------------------------------------

    def knows(self, node_id: str) -> bool:
        return node_id in self.accounts

    @property
    def announced(self) -> bool:
        """This node's own account is bound to its id in the heartbeat room:
        every other node can check its posts, so it may post."""
        return self.accounts.get(self.me) == self.account

    def node_of(self, sender: str) -> str | None:
        return self._nodes_of.get(sender)

    def named_node(self, event: RoomEvent) -> str | None:
        """The node a cluster event names (whose account must have sent it), if any."""
        content = event.content
        if event.type == st.RUN_SPEC or event.type == st.RUN_COORDINATOR:
            value = content.get("node_id")
        else:
            key = {
                st.TASK_ASSIGNED: "assigned_by", st.TASK_CLAIMED: "claimed_by",
                st.TASK_RESULT: "reported_by", st.TASK_REVOKED: "revoked_by",
            }.get(event.type)
            value = content.get(key) if key else None
        return value if isinstance(value, str) else None

    # -- the heartbeat room -------------------------------------------------------------------

    def heartbeat_event(self, event: RoomEvent, now: float) -> list[BrainAction]:
        """A state or timeline event of the heartbeat room, in order."""
        self._now = max(self._now, now)
        if event.type == NODE_STATUS and event.state_key:
            node_id = event.state_key
            if not _NODE_ID.fullmatch(node_id):
                return []
            bound = self.accounts.get(node_id)
            if bound is None:
                self.accounts[node_id] = event.sender
                self._nodes_of.setdefault(event.sender, node_id)
            elif bound != event.sender:
                self.counts.impostors += 1
                self.notes.append(("dag.cluster.impostor", {"node": node_id, "sender": event.sender}))
                return []
            status = event.content.get("status")
            if isinstance(status, str):
                return self._observed(self.observer.status(node_id, status, now))
            return []
        if event.type == HEARTBEAT:
            beating = event.content.get("node_id")
            if isinstance(beating, str) and self.accounts.get(beating) == event.sender:
                return self._observed(self.observer.heartbeat(beating, now))
        return []

    def sync_failed(self, now: float) -> list[BrainAction]:
        self._now = max(self._now, now)
        return self._observed(self.observer.sync_failed(now))

    def sync_ok(self, now: float) -> list[BrainAction]:
        self._now = max(self._now, now)
        return self._observed(self.observer.sync_ok(now))

    def _live(self) -> set[str]:
        return self.observer.live() | {self.me}

    def _observed(self, moves: list[ObserverAction]) -> list[BrainAction]:
        actions: list[BrainAction] = []
        for move in moves:
            if isinstance(move, NodeDead):
                self.notes.append(("dag.cluster.node_dead", {"node": move.node_id, "reason": move.reason}))
            else:
                self.notes.append(("dag.cluster.node_back", {"node": move.node_id}))
            for run in list(self.runs.values()):
                if isinstance(move, NodeDead):
                    actions += self._cluster(run, run.cluster.node_down(move.node_id))
                elif isinstance(move, NodeAlive):
                    actions += self._cluster(run, run.cluster.node_up(move.node_id))
        # A node seen alive for the first time is no NodeAlive (it was never
        # dead), but federation may now choose it.
        live = self._live()
        for node_id in sorted(live - self._live_seen):
            for run in list(self.runs.values()):
                if node_id not in run.cluster.live:
                    actions += self._cluster(run, run.cluster.node_up(node_id))
        self._live_seen = live
        return actions

    # -- the cluster room ---------------------------------------------------------------------

    def replay(self, event: RoomEvent, now: float, wall: float) -> list[BrainAction]:
        """An event of the cluster room's history, read on start (before :meth:`caught_up`)."""
        return self._room_event(event, now, wall)

    def caught_up(self, now: float) -> list[BrainAction]:
        """The history is read: act on where every run stands."""
        self.replaying = False
        self._now = max(self._now, now)
        actions: list[BrainAction] = []
        for run_id in list(self.runs):
            actions += self._worker(self.worker.caught_up(run_id))
        return actions + self._lead_all()

    def cluster_event(self, event: RoomEvent, now: float, wall: float) -> list[BrainAction]:
        """A new event of the cluster room, in timeline order."""
        return self._room_event(event, now, wall)

    def _room_event(self, event: RoomEvent, now: float, wall: float) -> list[BrainAction]:
        self._now, self._wall = now, wall
        if event.type == st.RUN_SPEC:
            return self._spec(event)
        if event.type in RUN_END_TYPES:
            return self._run_end(event)
        if event.type in (st.RUN_PAUSED, st.RUN_STARTED):
            run = self._of_coordinator(event)
            if run is not None:
                run.paused = event.type == st.RUN_PAUSED
            return []
        if event.type == st.TASK_STATUS:
            by = self.node_of(event.sender)
            ended = task_ended(event.content, by) if by is not None else None
            run = self.runs.get(ended.run_id) if ended is not None else None
            if ended is None or run is None:
                return []
            return self._ledger_event(run, ended)
        if event.type not in st.CLUSTER_EVENT_TYPES:
            return []
        named = self.named_node(event)
        if named is None or self.accounts.get(named) != event.sender:
            self.notes.append(("dag.cluster.not_its_node", {"type": event.type, "named": named, "sender": event.sender}))
            return []
        parsed = st.parse_cluster_event(event.type, event.content)
        if parsed is None:
            return []
        if isinstance(parsed, st.Coordinator):
            run_id = event.state_key
        else:
            run_id = parsed.run_id
        run = self.runs.get(run_id) if run_id else None
        if run is None:
            return []
        return self._ledger_event(run, parsed)

    def _ledger_event(self, run: _Run, event: LedgerEvent) -> list[BrainAction]:
        run_id = run.info.run_id
        actions: list[BrainAction] = []
        if self.replaying:
            self.worker.replay(run_id, event)
        else:
            actions += self._worker(self.worker.observe(run_id, event))
        actions += self._cluster(run, run.cluster.observe(event))
        return actions

    def _spec(self, event: RoomEvent) -> list[BrainAction]:
        info = st.parse_run_spec(event.content)
        if info is None or info.run_id in self.runs or info.run_id in self.ended:
            return []
        if self.accounts.get(info.node_id) != event.sender:
            self.notes.append(("dag.cluster.not_its_node", {"type": event.type, "named": info.node_id, "sender": event.sender}))
            return []
        try:
            spec = parse_dag(info.spec, allow_commands=True, source=f"run {info.run_id}")
        except DagSpecError as exc:
            self.notes.append(("dag.cluster.bad_spec", {"run_id": info.run_id, "error": exc.lines()[0]}))
            return []
        if spec.version != info.version:
            self.notes.append(("dag.cluster.bad_spec", {"run_id": info.run_id, "error": "its version does not match its content"}))
            return []
        mode: Mode = "federation" if info.mode == "federation" else "matrix"
        ledger = Ledger(info.run_id, info.node_id, task_ids=[t.id for t in spec.tasks])
        cluster = ClusterRun(ledger, self.me, mode=mode, workers=info.workers or (self.me,), live=self._live())
        for dead in self.observer.dead():
            cluster.node_down(dead)
        self.runs[info.run_id] = _Run(info, spec, cluster)
        self.worker.follow(info.run_id, info.node_id)
        return []

    def _run_end(self, event: RoomEvent) -> list[BrainAction]:
        run = self._of_coordinator(event)
        return [] if run is None else self._forget(run, RUN_END_TYPES[event.type])

    def _of_coordinator(self, event: RoomEvent) -> _Run | None:
        """The run a run event names, if its current coordinator's account sent it."""
        run_id = event.content.get("run_id")
        run = self.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None or self.node_of(event.sender) != run.cluster.ledger.coordinator:
            return None
        return run

    def _forget(self, run: _Run, how: str) -> list[BrainAction]:
        run_id = run.info.run_id
        self.ended[run_id] = how
        del self.runs[run_id]
        # Counted into the totals: the run's machines are dropped now.
        self.counts.reassigned += run.cluster.reassigned
        self.counts.stale_results_ignored += run.cluster.stale_results_ignored
        return [*self._worker(self.worker.run_ended(run_id)), RunOver(run_id, how)]

    # -- leading ------------------------------------------------------------------------------

    def settle(self) -> list[BrainAction]:
        """Caught up with what the homeserver gave (a whole sync, a tick): who
        leads each run is decided now, never in the middle of a batch, where
        the room's coordinator may not be the current one yet."""
        return self._lead_all()

    def _lead_all(self) -> list[BrainAction]:
        actions: list[BrainAction] = []
        for run in list(self.runs.values()):
            actions += self._lead(run)
        return actions

    def _lead(self, run: _Run) -> list[BrainAction]:
        if self.replaying or run.info.run_id not in self.runs:
            return []
        ledger = run.cluster.ledger
        decision = leadership(
            ledger.coordinator, ledger.coordinator_epoch, me=self.me, live=self._live(), dead=self.observer.dead()
        )
        if isinstance(decision, TakeOver):
            run.scheduler = None
            if decision.epoch in run.took_over:
                return []
            run.took_over.add(decision.epoch)
            self.notes.append(("dag.cluster.take_over", {"run_id": run.info.run_id, "from": ledger.coordinator, "epoch": decision.epoch}))
            return [Post(st.RUN_COORDINATOR, st.run_coordinator_content(self.me, decision.epoch), run.info.run_id)]
        if not isinstance(decision, Lead):
            run.scheduler = None  # another leads: this node's schedule is not the run's
            return []
        if run.scheduler is not None:
            return []
        retries = {t.id: t.retries for t in run.spec.tasks}
        facts = ledger.facts(retries)
        status = RunStatus.PAUSED if run.paused else RunStatus.RUNNING if facts else RunStatus.CREATED
        scheduler = Scheduler.restore(run.spec, status, facts, backoff_first_s=self.retry_backoff_s)
        scheduler.own_deadlines = False  # timeouts go through the room (ClusterRun.tick)
        run.scheduler = scheduler
        actions: list[BrainAction] = []
        for task_id, fact in facts.items():
            if fact.status.final:
                # Known to the store of the node that led before; this one's learns it now.
                change = TaskStatusChanged(task_id, fact.status, fact.attempts, scheduler.progress(), output=fact.output)
                record = self._record(run, change)
                actions.append(record)
                if ledger.tasks[task_id].phase not in ("completed", "ended"):
                    # Final by the room's results (out of retries) but never
                    # said by a coordinator: said now, or no reader would
                    # ever see the task end.
                    actions.append(Post(record.event.type, record.event.content))
        return actions + self._scheduler(run, scheduler.start(self._now))

    # -- control (the API on this node) -------------------------------------------------------------

    def confirm(
        self, run_id: str, spec: DagSpec, *, mode: str, workers: Iterable[str], wall: float
    ) -> list[BrainAction]:
        """A run confirmed on this node: post it; this node leads it once the
        timeline has it. :class:`ClusterRefused` (with the fix) when it cannot go."""
        workers = tuple(workers)
        if mode == "federation" and not workers:
            raise ClusterRefused(
                "mode federation assigns tasks to named nodes: give them (dag run FILE --workers node-a,node-b)"
            )
        if mode == "matrix" and workers:
            raise ClusterRefused(
                "mode matrix offers every task to the nodes that accept remote tasks; --workers is for mode"
                " federation (leave it out, or set [dag] execution_mode = \"federation\")"
            )
        bad = [w for w in workers if not _NODE_ID.fullmatch(w)]
        if bad:
            raise ClusterRefused(f"--workers: {bad[0]!r} is not a node id (letters, digits, '-', '_', '.')")
        unknown = [w for w in workers if w not in self.accounts]
        if unknown:
            # A typo would park the run's tasks for ever; a node that is only
            # down now is known, and its tasks wait for it.
            raise ClusterRefused(
                f"--workers: no node {unknown[0]!r} has ever announced itself in the heartbeat room;"
                " check the name (each node's node_id in its node.toml)"
            )
        at = datetime.fromtimestamp(wall, UTC)
        text = st.dag_toml(spec.to_mapping())
        if parse_dag(text, allow_commands=True, source="the run's spec").version != spec.version:
            raise RuntimeError(f"the DAG {spec.dag_id} does not read back as itself from TOML")  # a bug of dag_toml
        try:
            content = st.run_spec(
                run_id, spec.dag_id, spec.version, text, owner=spec.owner, mode=mode,
                workers=workers, node_id=self.me, at=at,
            )
        except st.SpecTooLarge as exc:
            raise ClusterRefused(str(exc)) from None
        return [
            Post(st.RUN_SPEC, content),
            Post(st.RUN_COORDINATOR, st.run_coordinator_content(self.me, 1), run_id),
        ]

    def control(self, run_id: str, what: str, now: float) -> list[BrainAction]:
        """``cancel``, ``pause`` or ``resume`` a run this node leads."""
        run = self.runs.get(run_id)
        if run is None or run.scheduler is None:
            leader = run.cluster.ledger.coordinator if run is not None else None
            where = f"node {leader} leads it: ask that node's API" if leader else "this node does not lead it"
            raise ClusterRefused(f"run {run_id}: {where}")
        scheduler = run.scheduler
        self._now = now
        if what == "cancel":
            return self._scheduler(run, scheduler.cancel(now))
        if what == "pause":
            return self._scheduler(run, scheduler.pause(now))
        return self._scheduler(run, scheduler.resume(now))

    # -- this node's copies --------------------------------------------------------------------------

    def finished(
        self, run_id: str, task_id: str, epoch: int, outcome: str, output: str, reason: str | None = None
    ) -> list[BrainAction]:
        """The local copy of ``task_id`` (execution ``epoch``) ended."""
        return self._worker(self.worker.finished(run_id, task_id, epoch, outcome, output, reason))

    # -- time -----------------------------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[BrainAction]:
        self._now, self._wall = now, wall
        actions = self._observed(self.observer.tick(now))
        for run in list(self.runs.values()):
            actions += self._cluster(run, run.cluster.tick(now))
            if run.scheduler is not None:
                actions += self._scheduler(run, run.scheduler.tick(now))
        return actions

    def next_due(self) -> float | None:
        times = [self.observer.next_due()]
        for run in self.runs.values():
            times.append(run.cluster.next_due())
            if run.scheduler is not None:
                times.append(run.wake_at)
        return min((t for t in times if t is not None), default=None)

    # -- performing the machines' actions ---------------------------------------------------------------

    def _scheduler(self, run: _Run, actions: list[Action]) -> list[BrainAction]:
        out: list[BrainAction] = []
        for a in actions:
            scheduler = run.scheduler
            if scheduler is None:
                return out
            if isinstance(a, StartAttempt):
                out += self._cluster(run, run.cluster.start_attempt(a))
            elif isinstance(a, CancelAttempt):
                out += self._cluster(run, run.cluster.cancel_attempt(a))
            elif isinstance(a, WakeAt):
                run.wake_at = a.at
            elif isinstance(a, TaskStatusChanged):
                record = self._record(run, a)
                out.append(record)
                if a.status.final:
                    # One event each, never batched: the ledger reads it as TaskEnded.
                    out.append(Post(record.event.type, record.event.content))
            elif isinstance(a, RunStatusChanged):
                record = self._record(run, a)
                out.append(record)
                if a.status in (RunStatus.PAUSED, RunStatus.RUNNING):
                    # In the room, so that a node taking the run over keeps it paused (or not).
                    out.append(Post(record.event.type, record.event.content))
            elif isinstance(a, RunFinished):
                event_type = {
                    RunStatus.COMPLETED: st.RUN_COMPLETED, RunStatus.FAILED: st.RUN_FAILED,
                    RunStatus.CANCELLED: st.RUN_CANCELLED,
                }[a.status]
                progress = st.Progress(a.progress.completed, a.progress.total, a.progress.failed)
                event = st.run_event(event_type, run.info.run_id, run.spec.dag_id, progress, at=self._at())
                out.append(Post(event.type, event.content))
        return out

    def _record(self, run: _Run, change: TaskStatusChanged | RunStatusChanged) -> Record:
        at = self._at()
        progress = st.Progress(change.progress.completed, change.progress.total, change.progress.failed)
        if isinstance(change, RunStatusChanged):
            event_type = {
                RunStatus.RUNNING: st.RUN_STARTED, RunStatus.PAUSED: st.RUN_PAUSED, RunStatus.COMPLETED: st.RUN_COMPLETED,
                RunStatus.FAILED: st.RUN_FAILED, RunStatus.CANCELLED: st.RUN_CANCELLED,
            }.get(change.status, st.RUN_STARTED)
            event = st.run_event(event_type, run.info.run_id, run.spec.dag_id, progress, at=at)
        else:
            task = run.spec.task(change.task_id)
            event = st.task_status(
                run.info.run_id, change.task_id, str(change.status), agent_type=task.agent,
                session_id=session_id_for(run.info.run_id, change.task_id), attempt=change.attempt,
                progress=progress, at=at,
            )
        return Record(run.info.run_id, run.spec, change, event, run.info.node_id)

    def _cluster(self, run: _Run, actions: list[Any]) -> list[BrainAction]:
        out: list[BrainAction] = []
        run_id = run.info.run_id
        for a in actions:
            if isinstance(a, Assign):
                task = run.spec.task(a.task_id)
                if task.is_command:
                    task_input = st.TaskInput(command=task.command)
                else:
                    outputs = {t: r.output or "" for t, r in run.cluster.ledger.tasks.items() if r.phase == "completed"}
                    task_input = st.TaskInput(prompt=render_prompt(task, outputs))
                event = st.task_assigned(
                    run_id, a.task_id, assigned_to=a.assigned_to, assigned_by=self.me, agent_type=task.agent,
                    upstream_tasks=task.deps, epoch=a.epoch, attempt=a.attempt, task_input=task_input,
                    input_url="", at=self._at(),
                )
                attachment = None
                if "input_url" in event.content:
                    body = _json_bytes(st.task_input_body(task_input))
                    attachment = Attachment("input_url", body, "application/json")
                out.append(Post(event.type, event.content, attachment=attachment))
            elif isinstance(a, Revoke):
                event = st.task_revoked(run_id, a.task_id, self.me, a.epoch, a.reason, at=self._at())
                out.append(Post(event.type, event.content))
            elif run.scheduler is None:
                continue
            else:
                out += self._report(run, run.scheduler, a)
        return out

    def _report(self, run: _Run, scheduler: Scheduler, a: Any) -> list[BrainAction]:
        """What the ledger accepted, told to the scheduler. A report of an
        attempt the scheduler no longer runs (it ended it itself) is late, not
        wrong: ignored, as a run actor ignores one (actors/run.py)."""
        try:
            if isinstance(a, AttemptStarted):
                return self._scheduler(run, scheduler.attempt_started(a.task_id, a.attempt, self._now))
            if isinstance(a, Succeeded):
                return self._scheduler(run, scheduler.succeeded(a.task_id, a.attempt, a.output or "", self._now))
            if isinstance(a, ClusterAttemptFailed):
                return self._scheduler(run, scheduler.failed(a.task_id, a.attempt, a.reason, self._now))
        except (UnknownAttempt, UnknownTask) as exc:
            self.notes.append(("dag.cluster.late_report", {"run_id": run.info.run_id, "error": str(exc)}))
        return []

    def _worker(self, actions: list[WorkerAction]) -> list[BrainAction]:
        out: list[BrainAction] = []
        for a in actions:
            if isinstance(a, Claim):
                event = st.task_claimed(a.run_id, a.task_id, self.me, a.epoch, at=self._at())
                out.append(Post(event.type, event.content))
            elif isinstance(a, Run):
                out += self._start(a)
            elif isinstance(a, Stop):
                out.append(StopTask(a.run_id, a.task_id, a.epoch, a.reason))
            elif isinstance(a, PostResult):
                output = _cut(a.output, st.UPLOAD_LIMIT)
                event = st.task_result(
                    a.run_id, a.task_id, reported_by=self.me, epoch=a.epoch, outcome=a.outcome,
                    output=output, output_url="", reason=a.reason, at=self._at(),
                )
                attachment = None
                if "output_url" in event.content:
                    attachment = Attachment("output_url", output.encode("utf-8", "replace"), "text/plain; charset=utf-8")
                out.append(Post(event.type, event.content, attachment=attachment))
        self.counts.claims_lost = self.worker.claims_lost
        return out

    def _start(self, a: Run) -> list[BrainAction]:
        run = self.runs.get(a.run_id)
        why: str | None = None
        task: TaskSpec | None = None
        if run is None:
            why = "the run's spec was not seen"
        else:
            try:
                task = run.spec.task(a.task_id)
            except (KeyError, ValueError):
                why = "the run's spec has no such task"
        if task is not None and task.is_command and not self.allow_commands:
            why = f"commands are off on node {self.me} ([dag] allow_commands)"
        input_url = None
        if a.assigned.input is None:
            input_url = a.assigned.input_url
            if input_url is None or not input_url.startswith("mxc://"):
                why = f"its input is at {input_url!r}, not an mxc:// URI of the homeserver"
        if why is not None or task is None or run is None:
            # Reported as a failed attempt at once: the coordinator retries it
            # (elsewhere, in mode matrix) while the task has retries left.
            return self._worker(self.worker.finished(a.run_id, a.task_id, a.epoch, "failed", "", why))
        prompt = a.assigned.input.prompt if a.assigned.input is not None else None
        return [StartTask(a.run_id, a.task_id, a.epoch, task, prompt or "", run.info.owner, input_url)]

    def _at(self) -> datetime:
        return datetime.fromtimestamp(getattr(self, "_wall", 0.0), UTC)

    _now: float = 0.0
    _wall: float = 0.0

    def leads(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run.scheduler is not None

    def current_stats(self) -> ClusterCounts:
        """The counts, with what the runs still going add."""
        return ClusterCounts(
            reassigned=self.counts.reassigned + sum(r.cluster.reassigned for r in self.runs.values()),
            stale_results_ignored=self.counts.stale_results_ignored
            + sum(r.cluster.stale_results_ignored for r in self.runs.values()),
            claims_lost=self.worker.claims_lost,
            impostors=self.counts.impostors,
        )


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` bytes of UTF-8, with a marker saying what was cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    keep = limit - 200
    return encoded[:keep].decode("utf-8", "ignore") + CUT_MARKER.format(n=len(encoded) - keep, limit=limit)

