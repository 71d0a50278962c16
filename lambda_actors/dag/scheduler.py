"""One DAG run's schedule as a pure machine (SPEC section 8 "Semantics").

:class:`Scheduler` holds a run's state: every task's status and attempts,
the run's status, deadlines and retry times. It is fed events, each with
``now`` (any monotonic time in seconds, the caller's clock), and answers
with the actions to perform, in order. It does no I/O and reads no clock,
so every rule below is a unit test, and a restarted node rebuilds it from
stored facts (:meth:`Scheduler.restore`).

The rules:

- A task is ready when all its deps completed; the run starts ready tasks
  (:class:`StartAttempt`, which carries the attempt's deadline) unless it is
  paused. Which ready tasks start when slots are short is the node's choice
  (:mod:`.slots`): with ``auto_launch`` the machine starts them itself within
  the run's own ``max_workers``; without it the caller asks :meth:`demand`
  and calls :meth:`launch` for the tasks the node grants.
- A failed attempt (an error, a dropped agent, the timeout) is retried while
  the task has retries left, after 5 s, then 10 s, 20 s ...; a task out of
  retries is ``failed`` and every task downstream of it ``skipped``; other
  branches run on. The run ends when every task is final: ``failed`` if any
  task failed, else ``completed``.
- The machine knows each attempt's deadline and says when to wake it
  (:class:`WakeAt`); a :meth:`tick` past a deadline fails the attempt and
  cancels it (:class:`CancelAttempt`). A blocked task's clock stops while
  its owner decides and runs on with the time it had left.
- Pausing stops new starts; running tasks finish (or fail and are retried
  later: retries wait for resume like any start). Cancelling cancels the
  running attempts and turns every task that is not final ``cancelled``.
- A final status never changes. Task and run moves are the tables
  :data:`TASK_MOVES` and :data:`RUN_MOVES`; a move they do not allow raises
  :class:`IllegalMove`, a report about an attempt that never ran
  :class:`UnknownAttempt`. A report about an attempt the machine itself
  ended (timed out, cancelled) is late, not wrong: it is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from .slots import Ready, RunDemand, allocate
from .spec import DagSpec, TaskSpec

__all__ = [
    "BACKOFF_FIRST_S",
    "RUN_MOVES",
    "TASK_MOVES",
    "Action",
    "CancelAttempt",
    "IllegalMove",
    "Progress",
    "RunFinished",
    "RunStatus",
    "RunStatusChanged",
    "Scheduler",
    "SchedulerError",
    "StartAttempt",
    "TaskFacts",
    "TaskStatus",
    "TaskStatusChanged",
    "UnknownAttempt",
    "UnknownTask",
    "WakeAt",
    "backoff",
]

#: The wait before the first retry; each later one waits twice the one before.
BACKOFF_FIRST_S = 5.0


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  #: an upstream task failed
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL_TASK


class RunStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL_RUN


_FINAL_TASK = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED})
_FINAL_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

_T = TaskStatus
#: task status -> the statuses it may move to. A retry is running -> pending.
TASK_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.PENDING: frozenset({_T.RUNNING, _T.SKIPPED, _T.CANCELLED}),
    _T.RUNNING: frozenset({_T.COMPLETED, _T.FAILED, _T.PENDING, _T.BLOCKED, _T.CANCELLED}),
    _T.BLOCKED: frozenset({_T.RUNNING, _T.COMPLETED, _T.FAILED, _T.PENDING, _T.CANCELLED}),
}

_R = RunStatus
#: run status -> the statuses it may move to. A paused run still ends when
#: its last running task does.
RUN_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    _R.CREATED: frozenset({_R.RUNNING, _R.CANCELLED}),
    _R.RUNNING: frozenset({_R.PAUSED, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
    _R.PAUSED: frozenset({_R.RUNNING, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
}


class SchedulerError(Exception):
    """An event the run cannot take (a caller's mistake, never a task's failure)."""


class IllegalMove(SchedulerError):
    """A move the tables do not allow (a final status, or a skipped step)."""

    def __init__(self, what: str, current: str, wanted: str) -> None:
        super().__init__(f"{what}: cannot move from {current} to {wanted}")
        self.what = what
        self.current = current
        self.wanted = wanted


class UnknownTask(SchedulerError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r} in this run")
        self.task_id = task_id


class UnknownAttempt(SchedulerError):
    """A report about an attempt the machine never started (or one already reported)."""

    def __init__(self, task_id: str, attempt: int, live: int | None) -> None:
        super().__init__(f"{task_id}: attempt {attempt} is not running (running: {live})")
        self.task_id = task_id
        self.attempt = attempt


# --- actions -------------------------------------------------------------------


@dataclass(frozen=True)
class StartAttempt:
    """Run attempt ``attempt`` (from 1) of the task; it fails at ``deadline`` (the caller's clock)."""

    task_id: str
    attempt: int
    deadline: float


@dataclass(frozen=True)
class CancelAttempt:
    """Stop this attempt; its result, if one still comes, is ignored."""

    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class WakeAt:
    """Call :meth:`Scheduler.tick` at ``at`` (replaces the previous WakeAt; None: no timer needed)."""

    at: float | None


@dataclass(frozen=True)
class Progress:
    completed: int
    total: int
    failed: int


@dataclass(frozen=True)
class TaskStatusChanged:
    """To be written (a final status before anything else is done about it) and broadcast."""

    task_id: str
    status: TaskStatus
    attempt: int  #: the attempt this status is about; 0 for a task that never ran
    progress: Progress
    reason: str | None = None  #: why it failed, blocked, is retried, skipped or cancelled
    output: str | None = None  #: the output, with ``completed``


@dataclass(frozen=True)
class RunStatusChanged:
    status: RunStatus
    progress: Progress


@dataclass(frozen=True)
class RunFinished:
    """The last action of the run: nothing follows."""

    status: RunStatus
    progress: Progress


Action = StartAttempt | CancelAttempt | WakeAt | TaskStatusChanged | RunStatusChanged | RunFinished


@dataclass(frozen=True)
class TaskFacts:
    """What the store knows of a task, to rebuild the machine after a restart."""

    status: TaskStatus
    attempts: int = 0  #: attempts started
    failures: int | None = None  #: failed attempts; None: all started but the last
    output: str | None = None  #: a completed task's output (its dependents' prompts need it)


def backoff(failures: int, first_s: float = BACKOFF_FIRST_S) -> float:
    """The wait before the retry that follows the ``failures``-th failed attempt."""
    return first_s * 2 ** max(failures - 1, 0)


@dataclass
class _Task:
    spec: TaskSpec
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    failures: int = 0
    live: int | None = None  #: the attempt the executor is running
    abandoned: set[int] = field(default_factory=set)  #: attempts the machine ended itself
    waiting_on: int = 0  #: deps not yet completed
    ready_seq: int | None = None  #: set while ready and not started
    ready_at: float = 0.0
    retry_at: float | None = None
    deadline: float | None = None
    left_when_blocked: float | None = None


def _due_at(task: _Task) -> float:
    """When the task's timer fires (only asked of tasks that have one)."""
    times = [t for t in (task.deadline, task.retry_at) if t is not None]
    return min(times, default=float("inf"))


class Scheduler:
    """One run's schedule; see the module's docstring for the rules."""

    def __init__(self, spec: DagSpec, *, auto_launch: bool = True, backoff_first_s: float = BACKOFF_FIRST_S) -> None:
        self.spec = spec
        self.auto_launch = auto_launch
        #: The first retry's wait (tests shorten it; the node uses the default).
        self.backoff_first_s = backoff_first_s
        #: False: attempts' deadlines are the caller's to enforce (several nodes:
        #: a timeout counts only once the coordinator's revocation is in the
        #: run's room, so a result that got there first wins; ``dag/cluster.py``).
        self.own_deadlines = True
        self.status = RunStatus.CREATED
        #: Completed tasks' outputs, for their dependents' prompts.
        self.outputs: dict[str, str] = {}
        self._tasks = {t.id: _Task(t) for t in spec.tasks}
        self._dependents: dict[str, list[str]] = {t.id: [] for t in spec.tasks}
        for t in spec.tasks:
            for dep in t.deps:
                self._dependents[dep].append(t.id)
            self._tasks[t.id].waiting_on = len(t.deps)
        self._seq = 0
        #: Indexes kept with the tasks, so an event costs what it touches, not the run's size.
        self._ready: dict[str, _Task] = {}
        self._timed: set[str] = set()  #: tasks with a deadline or a retry time
        self._started = False
        self._interrupted: list[str] = []  #: restored tasks whose attempt died with the node
        self._announced_wake: float | None = None
        self._counts = {status: 0 for status in TaskStatus}
        self._counts[TaskStatus.PENDING] = len(spec.tasks)

    @classmethod
    def restore(
        cls,
        spec: DagSpec,
        run_status: RunStatus,
        facts: Mapping[str, TaskFacts],
        *,
        auto_launch: bool = True,
        backoff_first_s: float = BACKOFF_FIRST_S,
    ) -> Scheduler:
        """The machine of a run the store knew, before a restart.

        Final tasks stay final; a task that was running or blocked starts a
        new attempt (the one that was cut off does not count against its
        retries); a missing task is pending. Call :meth:`start` next.
        """
        machine = cls(spec, auto_launch=auto_launch, backoff_first_s=backoff_first_s)
        machine.status = run_status
        for task_id, fact in facts.items():
            task = machine._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id)
            task.attempts = fact.attempts
            if fact.failures is not None:
                task.failures = fact.failures
            else:
                task.failures = max(fact.attempts - (0 if fact.status is TaskStatus.FAILED else 1), 0)
            status = fact.status
            if status in (TaskStatus.RUNNING, TaskStatus.BLOCKED):
                status = TaskStatus.PENDING
                machine._interrupted.append(task_id)
            machine._set(task, status)
            if status is TaskStatus.COMPLETED:
                machine.outputs[task_id] = fact.output or ""
                for dependent in machine._dependents[task_id]:
                    machine._tasks[dependent].waiting_on -= 1
        return machine

    # --- what the run looks like -----------------------------------------------

    def task_status(self, task_id: str) -> TaskStatus:
        return self._task(task_id).status

    def attempts(self, task_id: str) -> int:
        return self._task(task_id).attempts

    def progress(self) -> Progress:
        return Progress(
            completed=self._counts[TaskStatus.COMPLETED],
            total=len(self._tasks),
            failed=self._counts[TaskStatus.FAILED],
        )

    def holding(self) -> int:
        """Tasks holding a slot: running or blocked."""
        return self._counts[TaskStatus.RUNNING] + self._counts[TaskStatus.BLOCKED]

    def ready(self) -> list[Ready]:
        """Tasks that would start now if given slots, in order of readiness (none while paused)."""
        if self.status is not RunStatus.RUNNING:
            return []
        found = [Ready(t.spec.id, t.ready_at, t.ready_seq) for t in self._ready.values() if t.ready_seq is not None]
        found.sort(key=lambda r: (r.ready_at, r.seq))
        return found

    def demand(self, run_id: str) -> RunDemand:
        """The run as :func:`.slots.allocate` sees it."""
        return RunDemand(run_id, self.spec.priority, self.spec.max_workers, self.holding(), self.ready())

    def next_due(self) -> float | None:
        """When :meth:`tick` has something to do (a deadline or a retry), if ever."""
        times = [
            t
            for task in (self._tasks[i] for i in self._timed)
            for t in (task.deadline, task.retry_at)
            if t is not None
        ]
        return min(times, default=None)

    # --- events ----------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Start the run (or, restored, carry it on from where it stood)."""
        if self._started:
            raise IllegalMove("run", str(self.status), "started again")
        self._started = True
        actions: list[Action] = []
        if self.status.final:
            return actions
        if self.status is RunStatus.CREATED:
            self._move_run(RunStatus.RUNNING, actions)
        for task_id in self._interrupted:
            # Stored as running: written back as pending until its new attempt starts.
            task = self._tasks[task_id]
            actions.append(self._changed(task, task.attempts, reason="the node restarted; a new attempt follows"))
        # Restored: anything pending whose upstream already failed is skipped
        # now (the node may have stopped between the failure and the skips).
        for task in self._tasks.values():
            if task.status in (TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED):
                self._skip_downstream(task, actions)
        for task in self._tasks.values():
            if task.status is TaskStatus.PENDING and task.waiting_on == 0:
                self._make_ready(task, now)
        return self._settle(now, actions)

    def launch(self, task_id: str, now: float) -> list[Action]:
        """Start a ready task the node granted a slot to (see :meth:`demand`)."""
        task = self._task(task_id)
        if task.ready_seq is None or self.status is not RunStatus.RUNNING:
            raise IllegalMove(task_id, f"{task.status} (not ready)", str(TaskStatus.RUNNING))
        actions: list[Action] = []
        self._launch(task, now, actions)
        return self._settle(now, actions)

    def attempt_started(self, task_id: str, attempt: int, now: float) -> list[Action]:
        """The executor really began the attempt now: its time counts from here."""
        task = self._live(task_id, attempt)
        if task is None:
            return []
        if task.status is TaskStatus.RUNNING:
            self._set_deadline(task, now + task.spec.timeout_s)
        return self._settle(now, [])

    def succeeded(self, task_id: str, attempt: int, output: str, now: float) -> list[Action]:
        task = self._live(task_id, attempt)
        if task is None:
            return []
        actions: list[Action] = []
        task.live = None
        task.left_when_blocked = None
        self._set_deadline(task, None)
        self.outputs[task_id] = output
        self._set(task, TaskStatus.COMPLETED)
        actions.append(self._changed(task, attempt, output=output))
        for dependent_id in self._dependents[task_id]:
            dependent = self._tasks[dependent_id]
            dependent.waiting_on -= 1
            if dependent.waiting_on == 0 and dependent.status is TaskStatus.PENDING:
                self._make_ready(dependent, now)
        return self._settle(now, actions)

    def failed(self, task_id: str, attempt: int, reason: str, now: float) -> list[Action]:
        task = self._live(task_id, attempt)
        if task is None:
            return []
        actions: list[Action] = []
        self._fail_attempt(task, reason, now, actions)
        return self._settle(now, actions)

    def timed_out(self, task_id: str, attempt: int, now: float) -> list[Action]:
        """The executor saw the deadline pass (the same as :meth:`tick` finding it)."""
        return self.failed(task_id, attempt, "timed out", now)

    def blocked(self, task_id: str, attempt: int, reason: str, now: float) -> list[Action]:
        """The task waits for its owner's decision; its clock stops meanwhile."""
        task = self._live(task_id, attempt)
        if task is None:
            return []
        self._move(task, TaskStatus.BLOCKED)
        if task.deadline is not None:
            task.left_when_blocked = max(task.deadline - now, 0.0)
        self._set_deadline(task, None)
        return self._settle(now, [self._changed(task, attempt, reason=reason)])

    def unblocked(self, task_id: str, attempt: int, now: float) -> list[Action]:
        task = self._live(task_id, attempt)
        if task is None:
            return []
        self._move(task, TaskStatus.RUNNING)
        left = task.left_when_blocked if task.left_when_blocked is not None else float(task.spec.timeout_s)
        self._set_deadline(task, now + left)
        task.left_when_blocked = None
        return self._settle(now, [self._changed(task, attempt)])

    def pause(self, now: float) -> list[Action]:
        actions: list[Action] = []
        self._move_run(RunStatus.PAUSED, actions)
        return self._settle(now, actions)

    def resume(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.status is not RunStatus.PAUSED:
            raise IllegalMove("run", str(self.status), f"{RunStatus.RUNNING} (resume: only a paused run)")
        self._move_run(RunStatus.RUNNING, actions)
        return self._settle(now, actions)

    def cancel(self, now: float, reason: str = "the run was cancelled") -> list[Action]:
        """Cancel the run: running attempts are cancelled, every task not final is ``cancelled``."""
        actions: list[Action] = []
        if RunStatus.CANCELLED not in RUN_MOVES.get(self.status, frozenset()):
            raise IllegalMove("run", str(self.status), str(RunStatus.CANCELLED))
        for task in self._tasks.values():
            if task.status.final:
                continue
            if task.live is not None:
                # The final status is written before the attempt is told to
                # stop: a cancel cut short still leaves the task cancelled.
                attempt = task.live
                self._end_live(task)
                self._set(task, TaskStatus.CANCELLED)
                actions.append(self._changed(task, attempt, reason=reason))
                actions.append(CancelAttempt(task.spec.id, attempt, reason))
            else:
                self._set(task, TaskStatus.CANCELLED)
                self._set_retry(task, None)
                self._unready(task)
                actions.append(self._changed(task, task.attempts, reason=reason))
        self._move_run(RunStatus.CANCELLED, actions)
        actions.append(RunFinished(self.status, self.progress()))
        return self._settle(now, actions)

    def tick(self, now: float) -> list[Action]:
        """Time passed: fail attempts past their deadline, make due retries ready."""
        actions: list[Action] = []
        if self.status.final:
            return actions
        timed = [(_due_at(t), t.spec.id, t) for t in (self._tasks[i] for i in self._timed)]
        for _, _, task in sorted(d for d in timed if d[0] <= now):
            if task.deadline is not None and task.live is not None:
                self._fail_attempt(task, "timed out", now, actions, abandon=True)
            elif task.retry_at is not None and task.status is TaskStatus.PENDING:
                at = task.retry_at
                self._set_retry(task, None)
                self._make_ready(task, at)
        return self._settle(now, actions)

    # --- the moves -------------------------------------------------------------

    def _task(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _live(self, task_id: str, attempt: int) -> _Task | None:
        """The task if ``attempt`` is its running one; None for a late report (ignore it)."""
        task = self._task(task_id)
        if task.live == attempt:
            return task
        if attempt in task.abandoned:
            return None
        raise UnknownAttempt(task_id, attempt, task.live)

    def _set(self, task: _Task, status: TaskStatus) -> None:
        self._counts[task.status] -= 1
        self._counts[status] += 1
        task.status = status

    def _move(self, task: _Task, status: TaskStatus) -> None:
        if status not in TASK_MOVES.get(task.status, frozenset()):
            raise IllegalMove(task.spec.id, str(task.status), str(status))
        self._set(task, status)

    def _move_run(self, status: RunStatus, actions: list[Action]) -> None:
        if status not in RUN_MOVES.get(self.status, frozenset()):
            raise IllegalMove("run", str(self.status), str(status))
        self.status = status
        actions.append(RunStatusChanged(status, self.progress()))

    def _changed(
        self, task: _Task, attempt: int, *, reason: str | None = None, output: str | None = None
    ) -> TaskStatusChanged:
        return TaskStatusChanged(task.spec.id, task.status, attempt, self.progress(), reason, output)

    def _make_ready(self, task: _Task, at: float) -> None:
        if task.ready_seq is None:
            task.ready_seq = self._seq
            task.ready_at = at
            self._seq += 1
            self._ready[task.spec.id] = task

    def _unready(self, task: _Task) -> None:
        task.ready_seq = None
        self._ready.pop(task.spec.id, None)

    def _set_deadline(self, task: _Task, at: float | None) -> None:
        task.deadline = at if self.own_deadlines else None
        self._index_timers(task)

    def _set_retry(self, task: _Task, at: float | None) -> None:
        task.retry_at = at
        self._index_timers(task)

    def _index_timers(self, task: _Task) -> None:
        if task.deadline is None and task.retry_at is None:
            self._timed.discard(task.spec.id)
        else:
            self._timed.add(task.spec.id)

    def _launch(self, task: _Task, now: float, actions: list[Action]) -> None:
        self._move(task, TaskStatus.RUNNING)
        self._unready(task)
        task.attempts += 1
        task.live = task.attempts
        deadline = now + task.spec.timeout_s
        self._set_deadline(task, deadline)
        actions.append(self._changed(task, task.attempts))
        actions.append(StartAttempt(task.spec.id, task.attempts, deadline))

    def _end_live(self, task: _Task) -> None:
        if task.live is not None:
            task.abandoned.add(task.live)
        task.live = None
        task.left_when_blocked = None
        self._set_deadline(task, None)

    def _fail_attempt(
        self, task: _Task, reason: str, now: float, actions: list[Action], *, abandon: bool = False
    ) -> None:
        attempt = task.live
        assert attempt is not None
        if abandon:
            self._end_live(task)
        else:
            task.live = None
            task.left_when_blocked = None
            self._set_deadline(task, None)
        task.failures += 1
        if task.failures <= task.spec.retries:
            self._move(task, TaskStatus.PENDING)
            self._set_retry(task, now + backoff(task.failures, self.backoff_first_s))
            actions.append(self._changed(task, attempt, reason=f"{reason}; retrying"))
        else:
            self._move(task, TaskStatus.FAILED)
            actions.append(self._changed(task, attempt, reason=reason))
            self._skip_downstream(task, actions)
        if abandon:
            # After the status: the failure is recorded before the attempt is stopped.
            actions.append(CancelAttempt(task.spec.id, attempt, reason))

    def _skip_downstream(self, failed: _Task, actions: list[Action]) -> None:
        """Skip every pending task downstream of ``failed`` (iteratively: chains may be long)."""
        stack = list(self._dependents[failed.spec.id])
        while stack:
            task = self._tasks[stack.pop()]
            if task.status is not TaskStatus.PENDING:
                continue  # already skipped through another path (or final)
            self._move(task, TaskStatus.SKIPPED)
            self._unready(task)
            self._set_retry(task, None)
            actions.append(
                self._changed(task, task.attempts, reason=f"upstream task {failed.spec.id!r} {failed.status}")
            )
            stack.extend(self._dependents[task.spec.id])

    def _settle(self, now: float, actions: list[Action]) -> list[Action]:
        """After every event: start what may start, end the run if all is final, say when to wake."""
        if self.auto_launch and self.status is RunStatus.RUNNING:
            for grant in allocate(None, [self.demand("")]):
                self._launch(self._tasks[grant.task_id], now, actions)
        if not self.status.final and self._counts_final() == len(self._tasks):
            failed = self._counts[TaskStatus.FAILED] > 0
            self._move_run(RunStatus.FAILED if failed else RunStatus.COMPLETED, actions)
            actions.append(RunFinished(self.status, self.progress()))
        if self.status.final:
            return actions  # RunFinished is the last action: no timer is needed after it
        due = self.next_due()
        if due != self._announced_wake:
            self._announced_wake = due
            actions.append(WakeAt(due))
        return actions

    def _counts_final(self) -> int:
        return sum(self._counts[s] for s in _FINAL_TASK)

