"""One actor per running run: it drives the run's :class:`..scheduler.Scheduler`.

A thin executor. Each input (a task's result, a slot granted, a timer, a
control call) goes to the scheduler, which answers with actions; every
input already waiting in the mailbox when the actor wakes is folded into
the same step. A step's actions are applied in order, in ONE
``store.batch()`` (one commit), with the status events (SPEC 8.1, built by
:mod:`..status`) appended to the store's outbox in the same transaction
when the node broadcasts. Only after the commit are task actors started
or killed, then (once the attempts just started have had their turn to
send their prompts) the watchers fed, the broadcaster poked and sockets
opened ahead: nothing is announced that was not kept, a final status is
written before the attempt it ends is stopped, and what only tells or
prepares is never on the path from a result to the next prompt. A node
that does not broadcast builds the events only for its watchers, if it
has any.

The actor holds nothing the store does not: it starts (and restarts after a
crash) from ``store.resume_facts`` (completed tasks stay completed; a task
that was running gets a new attempt, the cut one closed as
``interrupted``). A report from an attempt the machine no longer knows
(an earlier incarnation's, or one it ended itself) is ignored.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import trio

from ...runtime.address import Address
from ...runtime.context import ActorContext
from ...runtime.errors import ActorError
from ...runtime.monitors import Down
from ...runtime.request import Request
from ...runtime.spec import ChildSpec
from .. import scheduler as sch
from .. import status as st
from ..scheduler import (
    Action,
    CancelAttempt,
    RunFinished,
    RunStatus,
    RunStatusChanged,
    Scheduler,
    StartAttempt,
    TaskStatus,
    TaskStatusChanged,
    WakeAt,
)
from ..spec import DagSpec, render_prompt
from ..store import IllegalMove, TerminalState
from .messages import (
    AttemptBlocked,
    AttemptFailed,
    AttemptRecovered,
    AttemptSucceeded,
    CancelRun,
    Go,
    Granted,
    PauseRun,
    ResumeRun,
    RunEnded,
)
from .services import DagServices, run_key
from .task import Job, session_id_for, task_actor

__all__ = ["COORDINATOR", "run_actor", "task_child_name"]

#: The coordinator's name under ``node/dag``.
COORDINATOR = "runs"

_RUN_EVENT = {
    RunStatus.RUNNING: st.RUN_STARTED,
    RunStatus.PAUSED: st.RUN_PAUSED,
    RunStatus.COMPLETED: st.RUN_COMPLETED,
    RunStatus.FAILED: st.RUN_FAILED,
    RunStatus.CANCELLED: st.RUN_CANCELLED,
}


#: What announces a move: its events, or what they are built from when they
#: are needed (see _Run._write_task and _Run._told).
_Told = list[st.LogicalEvent] | tuple[object, ...]

#: How many steps down a chain sockets are opened ahead (see _Run._warm_up).
WARM_AHEAD = 2

#: Numbers warm actors' names (unique in the process).
_WARM_SEQ = itertools.count(1)


def task_child_name(run_id: str, task_id: str, attempt: int) -> str:
    return f"task-{run_id}-{task_id}-{attempt}"


async def run_actor(ctx: ActorContext, services: DagServices, run_id: str) -> None:
    services.registry = ctx.registry
    ctx.registry.register(run_key(run_id), ctx.address)
    run = _Run(ctx, services, run_id)
    try:
        await run.serve()
    finally:
        services.board.leave(run_id)


class _Run:
    def __init__(self, ctx: ActorContext, services: DagServices, run_id: str) -> None:
        self.ctx = ctx
        self.services = services
        self.store = services.store
        self.run_id = run_id
        record = self.store.run(run_id)
        self.owner = record.owner
        self.spec: DagSpec = self.store.spec(record.dag_id, record.version).spec
        facts = self.store.resume_facts(run_id)
        self.machine = Scheduler.restore(
            self.spec, record.status, facts, auto_launch=False, backoff_first_s=services.retry_backoff_s
        )
        #: Tasks whose attempt the stop cut off: written back as interrupted.
        self.interrupted = {t for t, f in facts.items() if f.status in (TaskStatus.RUNNING, TaskStatus.BLOCKED)}
        self.blocked: set[str] = set()
        self.live: dict[str, tuple[int, str]] = {}  #: task -> (attempt, child name)
        self.addresses: dict[str, Address] = {}  #: child name -> its address (monitored)
        self.tasks = {t.id: t for t in self.spec.tasks}
        self.dependents: dict[str, list[str]] = {t.id: [] for t in self.spec.tasks}
        for t in self.spec.tasks:
            for dep in t.deps:
                self.dependents[dep].append(t.id)
        #: Agent tasks whose socket is opened ahead: task -> (attempt, child name).
        self.warm: dict[str, tuple[int, str]] = {}
        #: Tasks started or completed since the last warm-up.
        self.to_warm: list[str] = []
        #: Moves kept but not yet told to the watchers (see _apply).
        self.untold: list[_Told] = []
        self.by_child: dict[str, tuple[str, int]] = {}
        self.artifacts: dict[tuple[str, int], tuple[str, ...]] = {}
        self.previews: dict[tuple[str, int], str] = {}
        self.wake_at: float | None = None
        self.finished = False
        self.log = ctx.log.bind(run_id=run_id)

    async def serve(self) -> None:
        self._orphans()
        services = self.services
        services.board.join(self.run_id, self.machine, self._wake)
        now = services.clock()
        self._step(self.machine.start(now))
        self.interrupted.clear()
        mailbox = self.ctx.mailbox
        while not self.finished:
            if self.to_warm or self.untold:
                # After the attempts just started have sent their prompts:
                # telling the watchers and opening sockets ahead is never in
                # their way.
                await trio.lowlevel.checkpoint()
                self._tell()
                touched, self.to_warm = self.to_warm, []
                self._warm_up(touched)
            deadline = math.inf if self.wake_at is None else self.wake_at
            msg = None
            with trio.move_on_at(deadline):
                try:
                    msg = await mailbox.receive()
                except trio.EndOfChannel:
                    return  # the node stops: the store resumes the run on the next start
            if msg is None:
                self._step(self.machine.tick(services.clock()))
                continue
            # Every message already waiting is folded into the same step: one
            # commit (and one allocation, one feed to the watchers) for all of
            # them, instead of one each. Taken without waiting, so the step
            # still follows its first message at once.
            batch = [msg]
            while True:
                try:
                    batch.append(mailbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._take(batch)

    def _drain(self) -> None:
        """The run ended: what is still held (a task actor's end posted before
        its report was read, a late call) is answered or let go here rather
        than dropped with a warning when the mailbox closes."""
        while True:
            try:
                msg = self.ctx.mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if isinstance(msg, Request):
                status = self.machine.status
                msg.fail(TerminalState(f"run {self.run_id}", status, "moved"))

    def _orphans(self) -> None:
        """Task actors of an earlier incarnation of this run: stopped (their
        attempts are this incarnation's interrupted ones)."""
        prefix = f"task-{self.run_id}-"
        for state in self.ctx.supervisor.which_children():
            if state.name.startswith(prefix):
                self.ctx.supervisor.kill(state.name, "its run actor restarted")

    def _wake(self) -> None:
        try:
            # Never waits: the board sends at most one Granted until it is taken.
            self.ctx.address.send_nowait(Granted())
        except ActorError:
            pass  # stopping: nothing to start any more

    def _take(self, batch: list[object]) -> None:
        """Feed ``batch`` to the machine, in order, and apply what it answers
        in one step; the calls among them are answered once it is kept."""
        now = self.services.clock()
        actions: list[Action] = []
        calls: list[Request[object]] = []
        for msg in batch:
            if isinstance(msg, Request):
                if self._control(msg, now, actions):
                    calls.append(msg)
            else:
                self._handle(msg, now, actions)
        try:
            self._step(actions)
        except BaseException as exc:
            for call in calls:
                call.fail(exc)
            raise
        for call in calls:
            call.reply(None)

    def _handle(self, msg: object, now: float, actions: list[Action]) -> None:
        """What the machine answers to one report, added to ``actions``."""
        machine = self.machine
        try:
            match msg:
                case Granted():
                    pass  # the step takes the grants
                case AttemptSucceeded(task_id=t, attempt=n, output=output, artifacts=artifacts):
                    self._done(t, n)
                    self.artifacts[(t, n)] = artifacts
                    actions += machine.succeeded(t, n, output, now)
                case AttemptFailed(task_id=t, attempt=n, reason=reason):
                    self._done(t, n)
                    actions += machine.failed(t, n, reason, now)
                case AttemptBlocked(task_id=t, attempt=n, reason=reason, output_preview=preview):
                    self.previews[(t, n)] = preview
                    actions += machine.blocked(t, n, reason, now)
                case AttemptRecovered(task_id=t, attempt=n):
                    actions += machine.unblocked(t, n, now)
                case Down(path=path) if self._warm_ended(path.rpartition("/")[2]):
                    pass
                case Down(path=path, reason=reason) if reason not in ("normal", "shutdown", "noproc"):
                    # A task actor that crashed without reporting: its attempt failed.
                    name = path.rpartition("/")[2]
                    found = self.by_child.get(name)
                    if found is not None and self.live.get(found[0], (0, ""))[0] == found[1]:
                        self._done(*found)
                        actions += machine.failed(found[0], found[1], f"the task's actor crashed ({reason})", now)
                case _:
                    pass
        except (sch.UnknownAttempt, sch.UnknownTask) as exc:
            self.log.info("dag.run.late_report", error=str(exc))

    def _control(self, request: Request[object], now: float, actions: list[Action]) -> bool:
        """A call's move added to ``actions``; False if it was refused (and answered)."""
        if self.machine.status.final:
            # Ended by an earlier message of the same batch: as a call that
            # comes after the end (see _drain).
            request.fail(TerminalState(f"run {self.run_id}", self.machine.status, "moved"))
            return False
        try:
            match request.msg:
                case PauseRun():
                    actions += self.machine.pause(now)
                case ResumeRun():
                    actions += self.machine.resume(now)
                case CancelRun(reason=reason):
                    actions += self.machine.cancel(now, reason)
                case other:
                    request.fail(TypeError(f"a run actor does not take {other!r}"))
                    return False
        except sch.IllegalMove as exc:
            # The API speaks the store's errors (409).
            request.fail(IllegalMove(f"run {self.run_id}", exc.current, exc.wanted))
            return False
        return True

    def _warm_ended(self, name: str) -> bool:
        """A warm actor ended before its attempt started: it is forgotten."""
        found = self.by_child.get(name)
        if found is None or self.warm.get(found[0]) != (found[1], name):
            return False
        del self.warm[found[0]]
        self._forget(name)
        return True

    def _done(self, task_id: str, attempt: int) -> None:
        live = self.live.get(task_id)
        if live is not None and live[0] == attempt:
            del self.live[task_id]
            self._forget(live[1])

    def _forget(self, name: str) -> None:
        """The attempt reported (or was stopped): its actor's end tells nothing more."""
        self.by_child.pop(name, None)
        address = self.addresses.pop(name, None)
        if address is not None:
            self.ctx.demonitor(address)

    # -- one step ---------------------------------------------------------------------

    def _step(self, actions: list[Action]) -> None:
        """Apply ``actions`` with the starts the freed or granted slots allow,
        in one batch.

        One allocation is enough: it sees the machine after every event of
        the step, and the launches it leads to are the machine's last change
        before the write (applying the actions changes the store, not the
        machine), so a second one would find nothing more to grant."""
        services, machine = self.services, self.machine
        # Before the write: the starts this step allows go in the same commit.
        services.board.allocate(self.run_id)
        granted = services.board.take(self.run_id)
        if granted and machine.status is RunStatus.RUNNING:
            # A grant may be stale (the run paused since, or the task is no
            # longer ready): skipped. A launch takes only its own task out of
            # the ready set, so the set is read once.
            ready = {r.task_id for r in machine.ready()}
            now = services.clock()
            for task_id in granted:
                if task_id in ready:
                    actions += machine.launch(task_id, now)
        if actions:
            self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        services, store = self.services, self.store
        wall = services.wall()
        at = datetime.fromtimestamp(wall, UTC)
        told: list[_Told] = []  #: what announces the moves, in order
        starts: list[StartAttempt] = []
        cancels: list[CancelAttempt] = []
        ended: RunFinished | None = None
        touched: list[str] = []  #: tasks started or completed: their dependents may warm up
        finals: list[str] = []
        # All or nothing: any write's error escapes the step (the actor
        # restarts from the store), so the writes need no savepoints.
        with store.batch(all_or_nothing=True):
            for action in actions:
                match action:
                    case TaskStatusChanged(task_id=task_id, status=task_status):
                        told.append(self._write_task(action, wall, at))
                        if task_status is TaskStatus.COMPLETED:
                            touched.append(task_id)
                        if task_status.final:
                            finals.append(task_id)
                    case RunStatusChanged(status=status, progress=progress):
                        announce, events = self._outboxed((status, progress, at))
                        store.set_run_status(self.run_id, status, wall, events=events)
                        told.append(announce)
                    case StartAttempt():
                        starts.append(action)
                    case CancelAttempt():
                        cancels.append(action)
                    case WakeAt(at=when):
                        self.wake_at = when
                    case RunFinished():
                        ended = action
        # Kept: now acted on and told.
        for cancel in cancels:
            self._stop_attempt(cancel)
        for task_id in finals:
            self._cool(task_id)
        for start in starts:
            self._start_attempt(start)
            touched.append(start.task_id)
        if ended is None:
            self.to_warm += touched
        self.untold += told
        if ended is not None or not starts:
            self._tell()
        # Else told after the attempts just started have sent their prompts
        # (serve): building the events is not in their way.
        if ended is not None:
            for task_id in list(self.warm):
                self._cool(task_id)
            self.finished = True
            self.wake_at = None
            services.watchers.end(self.run_id)
            services.board.leave(self.run_id)
            self.log.info("dag.run.finished", status=str(ended.status))
            self._tell_coordinator()

    def _write_task(self, change: TaskStatusChanged, wall: float, at: datetime) -> _Told:
        """Write the task's move; what announces it. Only a node that
        broadcasts keeps the events in the store's outbox, so only it builds
        them before the write; otherwise they are built after the commit
        and the starts, and only if someone watches (see _apply and _tell):
        off the path from a result to the next prompt."""
        store, run_id, task_id = self.store, self.run_id, change.task_id
        session_id = session_id_for(run_id, task_id)
        extra: tuple[object, ...] = ()  #: what the second event, if any, is built from
        match change.status:
            case TaskStatus.RUNNING if task_id in self.blocked:
                self.blocked.discard(task_id)
                extra = (st.SESSION_RECOVERED,)
            case TaskStatus.BLOCKED:
                self.blocked.add(task_id)
                preview = self.previews.pop((task_id, change.attempt), "")
                extra = (st.SESSION_BLOCKED, change.reason or "waiting for the owner", preview)
            case TaskStatus.COMPLETED if self.services.node.dag_broadcast.broadcast_output:
                extra = (st.TASK_OUTPUT,)
        announce, events = self._outboxed((change, at, session_id, extra))
        match change.status:
            case TaskStatus.RUNNING if extra:
                store.recover(run_id, task_id, wall, events=events)
            case TaskStatus.RUNNING:
                number = store.start_attempt(run_id, task_id, wall, session_id=session_id, events=events)
                if number != change.attempt:
                    raise RuntimeError(f"{run_id}/{task_id}: the store numbers this attempt {number}, the run {change.attempt}")
            case TaskStatus.BLOCKED:
                store.block(run_id, task_id, wall, str(extra[1]), events=events)
            case TaskStatus.PENDING if task_id in self.interrupted:
                store.interrupt(run_id, task_id, wall, events=events)
            case TaskStatus.COMPLETED:
                artifacts = self.artifacts.pop((task_id, change.attempt), ())
                store.finish(run_id, task_id, TaskStatus.COMPLETED, wall, output=change.output or "",
                             artifacts=artifacts, events=events)
            case _:
                self.blocked.discard(task_id)
                store.finish(run_id, task_id, change.status, wall, reason=change.reason, events=events)
        return announce

    def _outboxed(self, announce: tuple[object, ...]) -> tuple[_Told, list[tuple[str, dict[str, object]]]]:
        """The announcement (built if the node broadcasts) and what of it
        goes to the store's outbox with the write (nothing otherwise)."""
        if not self.services.broadcasting:
            return announce, []
        built = self._told(announce)
        return built, self.services.outbox(built)

    def _told(self, announce: _Told) -> list[st.LogicalEvent]:
        """The events of an announcement (built now if they were not)."""
        if isinstance(announce, list):
            return announce
        if len(announce) == 3:  # the run's move
            status, progress, at = announce
            assert isinstance(status, RunStatus) and isinstance(progress, sch.Progress) and isinstance(at, datetime)
            return [st.run_event(_RUN_EVENT[status], self.run_id, self.spec.dag_id, _progress(progress), at=at)]
        change, at, session_id, extra = announce
        assert isinstance(change, TaskStatusChanged) and isinstance(at, datetime) and isinstance(session_id, str)
        assert isinstance(extra, tuple)
        run_id, task_id = self.run_id, change.task_id
        events = [
            st.task_status(
                run_id, task_id, str(change.status), agent_type=self.tasks[task_id].agent, session_id=session_id,
                attempt=change.attempt, progress=_progress(change.progress), at=at,
            )
        ]
        if extra:
            kind = extra[0]
            if kind == st.SESSION_RECOVERED:
                events.append(st.session_recovered(run_id, task_id, session_id, at=at))
            elif kind == st.SESSION_BLOCKED:
                events.append(st.session_blocked(run_id, task_id, session_id, str(extra[1]), str(extra[2]), at=at))
            else:
                events.append(st.task_output(run_id, task_id, change.output or "", at=at))
        return events

    def _tell(self) -> None:
        """The watchers (and the broadcaster) told of the moves kept so far, in order."""
        if not self.untold:
            return
        told, self.untold = self.untold, []
        services = self.services
        if services.watchers.count(self.run_id):
            services.watchers.publish(self.run_id, [event for announce in told for event in self._told(announce)])
        if services.broadcasting:
            services.poke()

    def _warm_up(self, touched: list[str]) -> None:
        """Open ahead the socket of each agent task that waits only on one
        running task, or on one whose socket is itself open ahead (two steps
        ahead at most, :data:`WARM_AHEAD`): when that one completes, the
        prompt goes out on a socket already open (the connection is made
        while the upstream task works, not after it; two ahead, so that a
        short upstream task does not end before its dependent's socket is
        up). No USER_MESSAGE is sent before the attempt starts; the chat is
        the attempt's own. At most ``warm_sockets`` (the node's slots) per
        run are open ahead."""
        machine, cap = self.machine, self.services.warm_sockets
        if cap <= 0 or machine.status is not RunStatus.RUNNING:
            return
        frontier = touched
        for _ in range(WARM_AHEAD):
            warmed: list[str] = []
            for upstream in frontier:
                for task_id in self.dependents[upstream]:
                    if len(self.warm) >= cap:
                        return
                    task = self.tasks[task_id]
                    if task.is_command or task_id in self.warm or task_id in self.live:
                        continue
                    if machine.task_status(task_id) is not TaskStatus.PENDING:
                        continue
                    waiting = [d for d in task.deps if machine.task_status(d) is not TaskStatus.COMPLETED]
                    if len(waiting) != 1 or not (
                        machine.task_status(waiting[0]) is TaskStatus.RUNNING or waiting[0] in self.warm
                    ):
                        continue
                    attempt = machine.attempts(task_id) + 1
                    # Numbered: an earlier incarnation's warm actor for the same
                    # attempt may still be on its way out (kill is not immediate).
                    name = f"{task_child_name(self.run_id, task_id, attempt)}-warm{next(_WARM_SEQ)}"
                    job = Job(self.run_id, task, attempt, None, self.owner, self.ctx.address)
                    try:
                        self._spawn(name, job)
                    except ActorError as exc:
                        self.log.info("dag.run.no_warm_socket", task_id=task_id, error=str(exc))
                        continue  # only an optimisation: the attempt opens its socket when it starts
                    self.warm[task_id] = (attempt, name)
                    warmed.append(task_id)
            frontier = warmed

    def _cool(self, task_id: str) -> None:
        """The task will not start (it ended, or the run did): its warm socket closes."""
        warm = self.warm.pop(task_id, None)
        if warm is not None:
            self._forget(warm[1])
            try:
                self.ctx.supervisor.kill(warm[1], "its task will not start")
            except LookupError:
                pass

    def _spawn(self, name: str, job: Job) -> None:
        address = self.ctx.supervisor.start_child(
            # Stopped at once when the node stops (it reads no mailbox to
            # drain); the cut attempt is closed as interrupted on resume.
            ChildSpec(name, task_actor, args=(self.services, job), restart="temporary", shutdown=0)
        )
        self.by_child[name] = (job.task.id, job.attempt)
        self.addresses[name] = address
        self.ctx.monitor(address)

    def _start_attempt(self, start: StartAttempt) -> None:
        task = self.tasks[start.task_id]
        name = task_child_name(self.run_id, task.id, start.attempt)
        prompt = "" if task.is_command else render_prompt(task, self.machine.outputs)
        warm = self.warm.pop(task.id, None)
        if warm is not None:
            if warm[0] == start.attempt:
                try:
                    # Never waits: a warm actor's mailbox holds nothing else.
                    self.addresses[warm[1]].send_nowait(Go(prompt))
                except (ActorError, KeyError):
                    pass  # it ended meanwhile: a fresh actor below
                else:
                    self.live[task.id] = (start.attempt, warm[1])
                    return
            self._cool_name(warm[1])
        job = Job(self.run_id, task, start.attempt, prompt, self.owner, self.ctx.address)
        self._spawn(name, job)
        self.live[task.id] = (start.attempt, name)

    def _cool_name(self, name: str) -> None:
        self._forget(name)
        try:
            self.ctx.supervisor.kill(name, "replaced by a fresh attempt")
        except LookupError:
            pass

    def _stop_attempt(self, cancel: CancelAttempt) -> None:
        live = self.live.pop(cancel.task_id, None)
        if live is None or live[0] != cancel.attempt:
            return
        self._forget(live[1])
        self.blocked.discard(cancel.task_id)
        # Synchronous: the actor is cancelled (its socket or process with it)
        # at its next checkpoint; its late report, if any, is ignored.
        try:
            self.ctx.supervisor.kill(live[1], cancel.reason)
        except LookupError:
            pass  # already gone

    def _tell_coordinator(self) -> None:
        try:
            # Never waits: one message per run in its life, and the
            # coordinator's mailbox is unbounded for exactly these.
            self.ctx.registry.lookup(f"{self.ctx.supervisor.path.rpartition('/')[0]}/{COORDINATOR}").send_nowait(
                RunEnded(self.run_id, self.ctx.supervisor.name)
            )
        except ActorError:
            pass  # the coordinator restarts: it tidies the workers when it starts


def _progress(progress: sch.Progress) -> st.Progress:
    return st.Progress(progress.completed, progress.total, progress.failed)

