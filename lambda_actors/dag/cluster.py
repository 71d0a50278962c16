"""Several nodes, one run: the ledger of its room, the coordinator's side, who leads (SPEC 8.3).

Matrix is the substrate: the run's room timeline is one ordered, durable
log every node reads in the same order, so we build no consensus of our
own. The "run's room" is the network's one cluster room (node.toml
``[dag.cluster] room``): every run's events go there, each carrying its
``run_id``, and ``cis.dag.run.coordinator`` is a state event whose state
key is the run id (the driver, ``actors/cluster_node.py``, routes events to
their run's ledger). Three pure parts (events in, actions out; no I/O, no
clock):

- **The ledger** (:class:`Ledger`): the state of one run's tasks as a fold
  of its room timeline, the same on every node that reads it. Its rules
  decide everything that must be decided once:

  - ``cis.dag.run.coordinator`` names who leads; a higher epoch replaces
    the leader, the first write of an epoch wins. Assignments, revocations
    and final statuses count only from the current leader.
  - ``cis.dag.task.assigned`` with an epoch above the task's current one
    makes it current (``assigned_to`` None: an offer to any node), unless
    it reassigns an attempt whose end (a failed result, a revocation) is
    already in the room: only the scheduler's next attempt follows that.
  - The first ``cis.dag.task.claimed`` of the current epoch (by the
    assignee, if the task was assigned) wins; later claims lose, and every
    claimant reads that from the same timeline.
  - The first ``cis.dag.task.result`` of the current epoch from the
    claimant ends the attempt; a result of an older epoch is stale
    (counted: :attr:`Ledger.stale_results_ignored`); a task completes once.

  Because acceptance is a function of the timeline alone, a node taking
  the run over knows exactly what the old coordinator counted. The
  leader's own writes change its view only when they come back through
  the timeline, so it never decides differently from its followers (a
  result that reaches the room before the leader's reassignment is
  accepted by all; the reassignment then finds the task completed and is
  ignored by all).

- **The coordinator's side** (:class:`ClusterRun`): turns the run
  scheduler's :class:`~.scheduler.StartAttempt` into assignments (mode
  ``matrix``: offered in the room; ``federation``: assigned to the live
  node of ``--workers`` with the fewest tasks, or round-robin), reassigns
  a dead node's tasks with ``epoch + 1``, and reports what the ledger
  accepted to the scheduler (each task completed once, whatever arrives).

- **Who leads** (:func:`leadership`): from the room's coordinator and the
  live nodes, whether this node leads the run, takes it over (the live
  node with the lowest id, when the coordinator is dead), or follows.

Guarantees: at-least-once execution (a task of a node declared dead runs
again elsewhere; the dead node, if it was only cut off, may finish its
copy, and an agent may see a task twice, with a higher epoch: the epoch
is the task's execution number), exactly-once accounting (the ledger
completes a task once). Cluster events are sent one per room event, never
batched, and the driver drops an event whose sender is not the Matrix
account of the node it names (``claimed_by``, ``reported_by``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .scheduler import CancelAttempt, StartAttempt, TaskFacts, TaskStatus
from .status import Assigned, Claimed, ClusterEvent, Coordinator, Result, Revoked

__all__ = [
    "PHASE_MOVES",
    "Accepted",
    "Assign",
    "AttemptFailed",
    "AttemptStarted",
    "ClusterError",
    "ClusterRun",
    "Follow",
    "IllegalMove",
    "Ignored",
    "Lead",
    "Ledger",
    "LedgerEvent",
    "Mode",
    "NotLeading",
    "Revoke",
    "Succeeded",
    "TakeOver",
    "TaskEnded",
    "TaskRecord",
    "leadership",
    "task_ended",
]

Mode = Literal["matrix", "federation"]
Policy = Literal["least-loaded", "round-robin"]

#: A task's phase in the ledger, and the phases each may move to. ``ended``
#: is a final status the coordinator wrote other than completed (failed,
#: skipped, cancelled); ``failed_attempt`` waits for a retry or that status.
Phase = Literal["idle", "offered", "assigned", "claimed", "failed_attempt", "revoked", "completed", "ended"]
PHASE_MOVES: dict[str, frozenset[str]] = {
    "idle": frozenset({"offered", "assigned", "revoked", "ended"}),
    "offered": frozenset({"offered", "assigned", "claimed", "revoked", "ended"}),
    "assigned": frozenset({"offered", "assigned", "claimed", "revoked", "ended"}),
    "claimed": frozenset({"offered", "assigned", "completed", "failed_attempt", "revoked", "ended"}),
    "failed_attempt": frozenset({"offered", "assigned", "revoked", "ended"}),
    "revoked": frozenset({"offered", "assigned", "revoked", "ended"}),
    "completed": frozenset(),
    "ended": frozenset(),
}
#: Phases in which a node holds (or is asked to hold) the task.
_HELD = frozenset({"offered", "assigned", "claimed"})


class ClusterError(Exception):
    """A caller's mistake (never a remote node's: their events are ignored, not errors)."""


class IllegalMove(ClusterError):
    """A phase change :data:`PHASE_MOVES` does not allow."""

    def __init__(self, task_id: str, current: str, wanted: str) -> None:
        super().__init__(f"{task_id}: cannot move from {current} to {wanted}")
        self.task_id, self.current, self.wanted = task_id, current, wanted


class NotLeading(ClusterError):
    """Only the run's coordinator assigns; this node follows (drop its scheduler)."""


@dataclass(frozen=True)
class TaskEnded:
    """A final status written by ``by`` (``cis.dag.task.status``). ``completed``
    only announces what the ledger decided from the result (see :meth:`Ledger.facts`)."""

    run_id: str
    task_id: str
    status: str
    by: str


def task_ended(content: Mapping[str, object], by: str) -> TaskEnded | None:
    """The :class:`TaskEnded` a ``cis.dag.task.status`` sent by node ``by`` says, if any. Never raises."""
    run_id, task_id, status = content.get("run_id"), content.get("task_id"), content.get("status")
    if not (isinstance(run_id, str) and isinstance(task_id, str) and status in ("completed", "failed", "skipped", "cancelled")):
        return None
    return TaskEnded(run_id, task_id, str(status), by)


LedgerEvent = ClusterEvent | TaskEnded


@dataclass
class TaskRecord:
    """What the timeline says of one task."""

    task_id: str
    phase: Phase = "idle"
    epoch: int = 0
    attempt: int = 0  #: the coordinator's attempt number of the current epoch
    assigned_to: str | None = None
    holder: str | None = None  #: the node whose claim won the current epoch
    failures: int = 0
    output: str | None = None
    output_url: str | None = None
    ended: str | None = None
    #: The coordinator has written the completion (``cis.dag.task.status``).
    announced: bool = False
    reason: str | None = None  #: why the last attempt failed


@dataclass(frozen=True)
class Accepted:
    """The event changed the ledger: ``what`` is the move (``assigned``, ``claimed``,
    ``completed``, ``failed``, ``revoked``, ``ended``, ``coordinator``)."""

    event: LedgerEvent
    what: str
    task: TaskRecord | None


@dataclass(frozen=True)
class Ignored:
    """The event changed nothing, and why (for counters and logs)."""

    event: LedgerEvent
    reason: str


class Ledger:
    """One run's tasks, folded from its room timeline (see the module's docstring).

    ``task_ids`` None: tasks are learnt from assignments (a worker does not
    know the run's DAG). Feed :meth:`observe` every cluster event of the
    run's room in timeline order, and nothing else.
    """

    def __init__(
        self, run_id: str, coordinator: str, *, coordinator_epoch: int = 0, task_ids: Iterable[str] | None = None
    ) -> None:
        self.run_id = run_id
        self.coordinator = coordinator
        self.coordinator_epoch = coordinator_epoch
        self.tasks: dict[str, TaskRecord] = {}
        self._known_only = task_ids is not None
        for task_id in task_ids or ():
            self.tasks[task_id] = TaskRecord(task_id)
        self.stale_results_ignored = 0
        self.duplicate_results_ignored = 0
        self.claims_lost = 0
        self.completed = 0
        self.ignored = 0

    def observe(self, event: LedgerEvent) -> Accepted | Ignored:
        if isinstance(event, Coordinator):
            if event.epoch <= self.coordinator_epoch:
                return self._ignore(event, f"coordinator epoch {event.epoch} is not above {self.coordinator_epoch}")
            self.coordinator, self.coordinator_epoch = event.node_id, event.epoch
            return Accepted(event, "coordinator", None)
        if event.run_id != self.run_id:
            return self._ignore(event, "another run")
        task = self.tasks.get(event.task_id)
        if task is None:
            if self._known_only or not isinstance(event, Assigned):
                return self._ignore(event, "no such task")
            task = self.tasks[event.task_id] = TaskRecord(event.task_id)
        match event:
            case Assigned():
                return self._assigned(task, event)
            case Claimed():
                return self._claimed(task, event)
            case Result():
                return self._result(task, event)
            case Revoked():
                if event.revoked_by != self.coordinator:
                    return self._ignore(event, f"{event.revoked_by} does not lead the run")
                if event.epoch <= task.epoch or not PHASE_MOVES[task.phase]:
                    return self._ignore(event, "revocation of an older epoch or an ended task")
                self._move(task, "revoked")
                task.epoch, task.assigned_to, task.holder = event.epoch, None, None
                return Accepted(event, "revoked", task)
            case TaskEnded():
                if event.by != self.coordinator:
                    return self._ignore(event, f"{event.by} does not lead the run")
                if event.status == "completed":
                    if task.phase != "completed" or task.announced:
                        return self._ignore(event, "a completion the results do not say, or said twice")
                    task.announced = True
                    return Accepted(event, "announced", task)
                if not PHASE_MOVES[task.phase]:
                    return self._ignore(event, f"task already {task.phase}")
                self._move(task, "ended")
                task.ended, task.holder = event.status, None
                return Accepted(event, "ended", task)
        return self._ignore(event, "not a ledger event")  # pragma: no cover - the match is exhaustive

    def _assigned(self, task: TaskRecord, event: Assigned) -> Accepted | Ignored:
        if event.assigned_by != self.coordinator:
            return self._ignore(event, f"{event.assigned_by} does not lead the run")
        if event.epoch <= task.epoch:
            return self._ignore(event, f"epoch {event.epoch} is not above {task.epoch}")
        phase: Phase = "offered" if event.assigned_to is None else "assigned"
        if phase not in PHASE_MOVES[task.phase]:
            return self._ignore(event, f"task already {task.phase}")
        if task.phase in ("failed_attempt", "revoked") and event.attempt <= task.attempt:
            # A reassignment (a takeover) of an attempt whose end is already in
            # the room: only the scheduler's next attempt may follow.
            return self._ignore(event, f"attempt {event.attempt} already ended")
        self._move(task, phase)
        task.epoch, task.attempt, task.assigned_to, task.holder = event.epoch, event.attempt, event.assigned_to, None
        return Accepted(event, "assigned", task)

    def _claimed(self, task: TaskRecord, event: Claimed) -> Accepted | Ignored:
        if event.epoch != task.epoch:
            return self._ignore(event, f"claim of epoch {event.epoch}, the task is at {task.epoch}")
        if task.phase not in ("offered", "assigned"):
            if task.phase == "claimed" and task.holder != event.claimed_by:
                self.claims_lost += 1
                return self._ignore(event, f"claim lost: {task.holder} claimed first")
            return self._ignore(event, f"task {task.phase}")
        if task.assigned_to is not None and task.assigned_to != event.claimed_by:
            return self._ignore(event, f"assigned to {task.assigned_to}")
        self._move(task, "claimed")
        task.holder = event.claimed_by
        return Accepted(event, "claimed", task)

    def _result(self, task: TaskRecord, event: Result) -> Accepted | Ignored:
        if event.epoch < task.epoch:
            self.stale_results_ignored += 1
            return self._ignore(event, f"stale: epoch {event.epoch}, the task is at {task.epoch}")
        if event.epoch > task.epoch:
            return self._ignore(event, f"epoch {event.epoch} was never assigned")
        if task.phase != "claimed":
            if task.phase in ("completed", "failed_attempt", "ended"):
                self.duplicate_results_ignored += 1
            return self._ignore(event, f"task {task.phase}")
        if event.reported_by != task.holder:
            return self._ignore(event, f"{event.reported_by} does not hold the task ({task.holder} does)")
        if event.outcome == "completed":
            self._move(task, "completed")
            task.output, task.output_url = event.output, event.output_url
            self.completed += 1
            return Accepted(event, "completed", task)
        self._move(task, "failed_attempt")
        task.failures += 1
        task.holder = None
        task.reason = event.reason
        return Accepted(event, "failed", task)

    def _move(self, task: TaskRecord, phase: Phase) -> None:
        if phase != task.phase and phase not in PHASE_MOVES[task.phase]:
            raise IllegalMove(task.task_id, task.phase, phase)
        task.phase = phase

    def _ignore(self, event: LedgerEvent, reason: str) -> Ignored:
        self.ignored += 1
        return Ignored(event, reason)

    def facts(self, retries: Mapping[str, int]) -> dict[str, TaskFacts]:
        """What a node taking the run over restores its scheduler from
        (:meth:`.Scheduler.restore`); ``retries`` is each task's retry budget.

        A task held by a node (offered, assigned, claimed) is restored as
        running: the scheduler starts a new attempt, which
        :meth:`ClusterRun.start_attempt` adopts while the holder is alive. So
        is a task completed whose completion the old coordinator did not
        write before it died: the start is answered at once with the result
        the ledger holds, and the new coordinator writes the completion.
        """
        facts: dict[str, TaskFacts] = {}
        for task in self.tasks.values():
            if task.phase == "completed" and not task.announced:
                facts[task.task_id] = TaskFacts(TaskStatus.RUNNING, task.attempt, task.failures)
            elif task.phase == "completed":
                facts[task.task_id] = TaskFacts(TaskStatus.COMPLETED, task.attempt, task.failures, task.output or "")
            elif task.phase == "ended":
                facts[task.task_id] = TaskFacts(TaskStatus(task.ended or "failed"), task.attempt, task.failures)
            elif task.phase in _HELD:
                facts[task.task_id] = TaskFacts(TaskStatus.RUNNING, task.attempt, task.failures)
            elif task.phase == "failed_attempt":
                # Its failure is counted by the scheduler when it starts the
                # task again (start_attempt answers with it): whether to retry
                # is the scheduler's rule, applied once.
                facts[task.task_id] = TaskFacts(TaskStatus.RUNNING, task.attempt, task.failures - 1)
            elif task.phase == "revoked":
                out_of_retries = task.failures > retries.get(task.task_id, 0)
                status = TaskStatus.FAILED if out_of_retries else TaskStatus.PENDING
                facts[task.task_id] = TaskFacts(status, task.attempt, task.failures)
        return facts


# -- the coordinator's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Assign:
    """Post ``cis.dag.task.assigned`` (``assigned_to`` None: an offer)."""

    task_id: str
    epoch: int
    attempt: int
    assigned_to: str | None


@dataclass(frozen=True)
class Revoke:
    """Post ``cis.dag.task.revoked``: whoever runs an older epoch stops."""

    task_id: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class AttemptStarted:
    """A node claimed the attempt: ``scheduler.attempt_started``."""

    task_id: str
    attempt: int


@dataclass(frozen=True)
class Succeeded:
    """``scheduler.succeeded`` (with ``output_url`` instead of ``output``, fetch it first)."""

    task_id: str
    attempt: int
    output: str | None
    output_url: str | None


@dataclass(frozen=True)
class AttemptFailed:
    """``scheduler.failed``."""

    task_id: str
    attempt: int
    reason: str


ClusterAction = Assign | Revoke | AttemptStarted | Succeeded | AttemptFailed


@dataclass
class _Pending:
    """A write of ours not yet seen in the timeline."""

    epoch: int
    assigned_to: str | None
    revoke: bool = False


class ClusterRun:
    """The coordinator's side of one run; every node keeps one and feeds it the timeline.

    Only the node the ledger names as coordinator acts (:attr:`leading`):
    its scheduler's actions go to :meth:`start_attempt` / :meth:`cancel_attempt`,
    liveness changes to :meth:`node_down` / :meth:`node_up` (every node
    feeds those, so a node taking over knows who is alive). The actions
    returned are writes to perform and reports for the scheduler.
    """

    def __init__(
        self,
        ledger: Ledger,
        me: str,
        *,
        mode: Mode,
        workers: Sequence[str] = (),
        live: Iterable[str] = (),
        policy: Policy = "least-loaded",
    ) -> None:
        if mode == "federation" and not workers:
            raise ClusterError("mode federation needs the worker nodes (dag run --workers node-a,node-b)")
        self.ledger = ledger
        self.me = me
        self.mode = mode
        self.workers = tuple(workers)
        self.policy = policy
        self.live: set[str] = set(live)
        #: Nodes declared dead (a node merely not yet seen is neither: its
        #: claim is not a dead node's, and federation does not choose it).
        self.dead: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        #: task -> the scheduler's attempt this coordinator runs it as.
        self._attempt: dict[str, int] = {}
        #: Federation tasks waiting for a live worker, in order.
        self._parked: dict[str, int] = {}
        self._turn = 0
        #: task -> when its attempt times out (the scheduler's own deadlines
        #: are off: ``Scheduler.own_deadlines = False``).
        self._deadline: dict[str, float] = {}
        #: task -> the highest epoch this coordinator wrote (epochs stay unique).
        self._written: dict[str, int] = {}
        #: Tasks whose timeout revocation is on its way: the failure counts
        #: only if the revocation reaches the room before a result.
        self._timing_out: set[str] = set()
        #: Tasks this coordinator has out with a node (or on their way to one):
        #: what a death or a choice of node looks at, so neither costs the run's size.
        self._inflight: set[str] = set()
        #: Tasks given to another node because theirs was declared dead.
        self.reassigned = 0

    @property
    def leading(self) -> bool:
        return self.ledger.coordinator == self.me

    @property
    def stale_results_ignored(self) -> int:
        return self.ledger.stale_results_ignored

    # -- inputs ------------------------------------------------------------------------

    def start_attempt(self, action: StartAttempt) -> list[ClusterAction]:
        """The scheduler started an attempt: assign it (or, just after a takeover,
        adopt the assignment still held by a live node)."""
        self._lead()
        task = self._record(action.task_id)
        self._deadline[task.task_id] = action.deadline
        self._timing_out.discard(task.task_id)
        if task.phase == "completed":
            # Completed before this coordinator's scheduler (restored after a
            # takeover) started it: the result stands, the task does not run again.
            self._attempt[task.task_id] = action.attempt
            return [Succeeded(task.task_id, action.attempt, task.output, task.output_url)]
        if not PHASE_MOVES[task.phase]:
            raise IllegalMove(task.task_id, task.phase, "assigned")
        fresh = action.task_id not in self._attempt and action.task_id not in self._pending
        if fresh and task.phase == "failed_attempt":
            # Failed before this coordinator's scheduler started it (taken over).
            self._attempt[task.task_id] = action.attempt
            return [AttemptFailed(task.task_id, action.attempt, task.reason or "the attempt failed")]
        if action.task_id not in self._attempt and action.task_id not in self._pending and task.phase in _HELD:
            owner = task.holder or task.assigned_to
            if owner is None or owner not in self.dead:
                # Taken over: the old coordinator's assignment stands.
                self._attempt[task.task_id] = action.attempt
                self._inflight.add(task.task_id)
                return [AttemptStarted(task.task_id, action.attempt)] if task.phase == "claimed" else []
        self._attempt[task.task_id] = action.attempt
        return self._assign(task.task_id, action.attempt)

    def cancel_attempt(self, action: CancelAttempt) -> list[ClusterAction]:
        """The scheduler ended an attempt (timed out, cancelled): revoke it."""
        self._lead()
        task = self._record(action.task_id)
        self._parked.pop(task.task_id, None)
        self._deadline.pop(task.task_id, None)
        if self._attempt.get(task.task_id) != action.attempt or not PHASE_MOVES[task.phase]:
            return []
        epoch = self._next_epoch(task)
        self._pending[task.task_id] = _Pending(epoch, None, revoke=True)
        return [Revoke(task.task_id, epoch, action.reason)]

    def observe(self, event: LedgerEvent) -> list[ClusterAction]:
        """A cluster event of the run's room, in timeline order."""
        outcome = self.ledger.observe(event)
        if not isinstance(outcome, Accepted) or outcome.task is None:
            return []
        task = outcome.task
        pending = self._pending.get(task.task_id)
        ended = outcome.what in ("completed", "failed", "ended")
        if pending is not None and (task.epoch >= pending.epoch or ended):
            # Seen, or void: a write for an attempt that has ended since.
            del self._pending[task.task_id]
        if task.phase not in _HELD and task.task_id not in self._pending:
            self._inflight.discard(task.task_id)
        if not self.leading or task.task_id not in self._attempt:
            # Not started by this coordinator's scheduler (yet): its start
            # reads the ledger (see start_attempt).
            return []
        attempt = self._attempt[task.task_id]
        newer_on_its_way = task.task_id in self._pending
        if outcome.what in ("completed", "failed", "revoked", "ended"):
            self._deadline.pop(task.task_id, None)
            timing_out = task.task_id in self._timing_out
            self._timing_out.discard(task.task_id)
            if outcome.what == "revoked" and timing_out:
                return [AttemptFailed(task.task_id, attempt, "timed out")]
        match outcome.what:
            case "claimed":
                if task.holder in self.dead and not newer_on_its_way:
                    return self._reassign(task)  # a late claim of a node already declared dead
                return [AttemptStarted(task.task_id, attempt)]
            case "completed":
                return [Succeeded(task.task_id, attempt, task.output, task.output_url)]
            case "failed":
                reason = event.reason if isinstance(event, Result) and event.reason else "the attempt failed"
                return [AttemptFailed(task.task_id, attempt, reason)]
            case "assigned" if not newer_on_its_way and task.assigned_to in self.dead:
                return self._reassign(task)
        return []

    def node_down(self, node_id: str) -> list[ClusterAction]:
        """``node_id`` was declared dead: its tasks go to live nodes with ``epoch + 1``."""
        self.live.discard(node_id)
        if node_id != self.me:
            self.dead.add(node_id)
        if not self.leading:
            return []
        actions: list[ClusterAction] = []
        for task_id in sorted(self._inflight):
            task = self._record(task_id)
            if self._owner(task) == node_id:
                actions += self._reassign(task)
        return actions

    def node_up(self, node_id: str) -> list[ClusterAction]:
        """``node_id`` is alive (again): parked federation tasks may go to it."""
        self.live.add(node_id)
        self.dead.discard(node_id)
        if not self.leading or not self._parked:
            return []
        parked, self._parked = self._parked, {}
        actions: list[ClusterAction] = []
        for task_id, attempt in parked.items():
            actions += self._assign(task_id, attempt)
        return actions

    def tick(self, now: float) -> list[ClusterAction]:
        """Time passed: revoke attempts past their deadline. The scheduler hears
        of the timeout (:class:`AttemptFailed`) once the revocation is in the
        room ahead of any result; a result first wins."""
        if not self.leading:
            return []
        actions: list[ClusterAction] = []
        for task_id, deadline in sorted(self._deadline.items(), key=lambda item: item[1]):
            if deadline > now:
                continue
            del self._deadline[task_id]
            task = self._record(task_id)
            self._parked.pop(task_id, None)
            if not PHASE_MOVES[task.phase] or task.phase == "failed_attempt":
                continue
            epoch = self._next_epoch(task)
            self._pending[task_id] = _Pending(epoch, None, revoke=True)
            self._timing_out.add(task_id)
            actions.append(Revoke(task_id, epoch, "timed out"))
        return actions

    def next_due(self) -> float | None:
        """When :meth:`tick` has an attempt to time out."""
        return min(self._deadline.values(), default=None)

    # -- decisions -----------------------------------------------------------------------

    def _lead(self) -> None:
        if not self.leading:
            raise NotLeading(f"{self.me} does not lead run {self.ledger.run_id} ({self.ledger.coordinator} does)")

    def _record(self, task_id: str) -> TaskRecord:
        task = self.ledger.tasks.get(task_id)
        if task is None:
            task = self.ledger.tasks[task_id] = TaskRecord(task_id)
        return task

    def _owner(self, task: TaskRecord) -> str | None:
        """Who is to run the task, counting our writes still on their way."""
        pending = self._pending.get(task.task_id)
        if pending is not None:
            return pending.assigned_to
        if task.phase == "claimed":
            return task.holder
        if task.phase == "assigned":
            return task.assigned_to
        return None

    def _next_epoch(self, task: TaskRecord) -> int:
        epoch = max(task.epoch, self._written.get(task.task_id, 0)) + 1
        self._written[task.task_id] = epoch
        return epoch

    def _reassign(self, task: TaskRecord) -> list[ClusterAction]:
        if task.task_id not in self._attempt and task.task_id not in self._pending:
            # Not ours to move yet: after a takeover the scheduler's start
            # (adopting or reassigning) comes first.
            return []
        self.reassigned += 1
        return self._assign(task.task_id, self._attempt.get(task.task_id, task.attempt))

    def _assign(self, task_id: str, attempt: int) -> list[ClusterAction]:
        task = self._record(task_id)
        target: str | None = None
        if self.mode == "federation":
            target = self._choose()
            if target is None:
                self._parked[task_id] = attempt
                self._pending.pop(task_id, None)
                return []
        epoch = self._next_epoch(task)
        self._pending[task_id] = _Pending(epoch, target)
        self._inflight.add(task_id)
        return [Assign(task_id, epoch, attempt, target)]

    def _choose(self) -> str | None:
        candidates = [w for w in self.workers if w in self.live]
        if not candidates:
            return None
        if self.policy == "round-robin":
            self._turn += 1
            return candidates[(self._turn - 1) % len(candidates)]
        load = {w: 0 for w in candidates}
        for task_id in self._inflight:
            owner = self._owner(self._record(task_id))
            if owner in load:
                load[owner] += 1
        return min(candidates, key=lambda w: load[w])  # ties: the first in --workers


# -- who leads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lead:
    """This node leads the run (the room names it)."""

    epoch: int


@dataclass(frozen=True)
class TakeOver:
    """Write ``cis.dag.run.coordinator`` ``{node_id: me, epoch}``; lead once it is in the timeline."""

    epoch: int


@dataclass(frozen=True)
class Follow:
    """Another node leads, or will."""

    leader: str


def leadership(
    coordinator: str, epoch: int, *, me: str, live: Iterable[str], dead: Iterable[str]
) -> Lead | TakeOver | Follow:
    """Whether ``me`` leads a run whose room names ``coordinator`` at ``epoch``.

    ``live`` and ``dead`` are what the liveness observer says
    (:class:`.liveness.Observer`; ``me`` counts as alive). Only a coordinator
    *declared* dead is replaced (one the observer has not seen yet is not):
    the live node with the lowest id takes over with ``epoch + 1``. If two
    nodes disagree on who is alive and both write, the first write in the
    timeline wins (:class:`Ledger`) and the other follows. Ask it only once
    caught up with the run's room, so ``coordinator`` is the current one.
    """
    if coordinator == me:
        return Lead(epoch)
    if coordinator not in set(dead):
        return Follow(coordinator)
    successor = min((set(live) - set(dead)) | {me})
    return TakeOver(epoch + 1) if successor == me else Follow(successor)
