"""Several nodes on one run, with the pure machines only: a timeline, nodes that
read it in order, die, are cut off and come back (SPEC 8.3).

The world below is the room: every post is appended to one list, every node
reads it in order at its own pace. A node runs the real machines
(:class:`Ledger` through :class:`ClusterRun` and :class:`Worker`, a real
:class:`Scheduler` while it leads, :func:`leadership`); only the transport
is simulated. The scenarios name what they show; the hypothesis model
throws random interleavings of claims, results, deaths and returns at it
and checks that every task ends once and none is counted complete twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_actors.dag.cluster import (
    Assign,
    AttemptFailed,
    AttemptStarted,
    ClusterRun,
    Lead,
    Ledger,
    LedgerEvent,
    Mode,
    Revoke,
    Succeeded,
    TakeOver,
    TaskEnded,
    leadership,
)
from lambda_actors.dag.cluster_worker import Claim, PostResult, Run, Stop, Worker
from lambda_actors.dag.liveness import NodeDead, Observer
from lambda_actors.dag.scheduler import (
    Action,
    CancelAttempt,
    RunFinished,
    RunStatus,
    Scheduler,
    StartAttempt,
    TaskStatus,
    TaskStatusChanged,
)
from lambda_actors.dag.spec import DagSpec, parse_dag
from lambda_actors.dag.status import Assigned, Claimed, Coordinator, Result, Revoked, TaskInput

RUN = "run-1"


@dataclass(frozen=True)
class RunEnded:
    """The run's end as the room shows it (``cis.dag.run.completed`` ...): it
    counts from the coordinator only, as everything the ledger reads."""

    status: str
    by: str


Posted = LedgerEvent | RunEnded


@dataclass
class Node:
    node_id: str
    world: World
    worker: Worker = field(init=False)
    cluster: ClusterRun = field(init=False)
    scheduler: Scheduler | None = None
    cursor: int = 0
    up: bool = True  #: the process runs
    connected: bool = True  #: it reaches the homeserver
    outbox: list[Posted] = field(default_factory=list)  #: posts waiting for the homeserver
    copies: dict[str, int] = field(default_factory=dict)  #: task -> epoch running here
    took_over: set[int] = field(default_factory=set)
    term: int = 0  #: how many times this node's schedulers were made (one per lead)

    def __post_init__(self) -> None:
        self.boot()

    def boot(self) -> None:
        """A fresh process: it reads the room from the start."""
        w = self.world
        self.worker = Worker(self.node_id, accept_remote_tasks=True, slots=w.slots)
        self.worker.follow(RUN, w.first_coordinator)
        ledger = Ledger(RUN, w.first_coordinator, task_ids=[t.id for t in w.spec.tasks])
        self.cluster = ClusterRun(
            ledger, self.node_id, mode=w.mode, workers=w.workers or w.node_ids, live=w.believed_live(), policy="least-loaded"
        )
        for node_id in w.dead:
            self.cluster.node_down(node_id)
        self.scheduler, self.cursor, self.copies, self.outbox, self.took_over = None, 0, {}, [], set()
        #: What the room held at the start: read as a replay, then acted on once.
        self.catch_up_to = len(w.timeline)

    def post(self, event: Posted) -> None:
        if self.connected:
            self.world.timeline.append(event)
        else:
            self.outbox.append(event)  # the client retries until it is back

    # -- reading the room -----------------------------------------------------------------

    def read(self, limit: int | None = None) -> int:
        """Read up to ``limit`` new events; how many were read."""
        if not (self.up and self.connected):
            return 0
        n = 0
        while self.cursor < len(self.world.timeline) and (limit is None or n < limit):
            event = self.world.timeline[self.cursor]
            self.cursor += 1
            n += 1
            if isinstance(event, RunEnded):
                if event.by == self.cluster.ledger.coordinator:
                    self.world.end = (event.by, event.status)
                    self.perform_worker(self.worker.run_ended(RUN))
                    self.scheduler = None
                continue
            if self.cursor <= self.catch_up_to:
                self.worker.replay(RUN, event)
            else:
                self.perform_worker(self.worker.observe(RUN, event))
            self.perform_cluster(self.cluster.observe(event))
            if self.cursor == self.catch_up_to:
                self.perform_worker(self.worker.caught_up(RUN))
            self.check_leadership()
        return n

    def check_leadership(self) -> None:
        if not (self.up and self.connected) or self.world.ended:
            return
        ledger = self.cluster.ledger
        if self.cursor < len(self.world.timeline):
            return  # ask once caught up with the room: the ledger's coordinator is then the current one
        decision = leadership(
            ledger.coordinator, ledger.coordinator_epoch, me=self.node_id, live=self.cluster.live, dead=self.cluster.dead
        )
        if isinstance(decision, TakeOver) and decision.epoch not in self.took_over:
            self.took_over.add(decision.epoch)
            self.post(Coordinator(self.node_id, decision.epoch))
        elif isinstance(decision, Lead) and self.scheduler is None:
            # Lead once caught up: the ledger then holds all the room says.
            retries = {t.id: t.retries for t in self.world.spec.tasks}
            facts = ledger.facts(retries)
            status = RunStatus.RUNNING if facts or self.world.started else RunStatus.CREATED
            self.world.started = True
            self.term += 1
            self.scheduler = Scheduler.restore(self.world.spec, status, facts, backoff_first_s=0.0)
            self.scheduler.own_deadlines = False  # timeouts go through the room (ClusterRun.tick)
            self.perform_scheduler(self.scheduler.start(self.world.now))
        elif not isinstance(decision, Lead):
            self.scheduler = None  # another leads: this node's schedule is not the run's

    # -- performing actions -------------------------------------------------------------------

    def perform_scheduler(self, actions: list[Action]) -> None:
        for a in actions:
            if self.scheduler is None:
                return
            if isinstance(a, StartAttempt):
                self.perform_cluster(self.cluster.start_attempt(a))
            elif isinstance(a, CancelAttempt):
                self.perform_cluster(self.cluster.cancel_attempt(a))
            elif isinstance(a, TaskStatusChanged):
                self.world.statuses.append((self.node_id, a))
                if a.status.final:
                    self.post(TaskEnded(RUN, a.task_id, str(a.status), self.node_id))
            elif isinstance(a, RunFinished):
                self.world.finished.append((self.node_id, a.status))
                self.post(RunEnded(str(a.status), self.node_id))

    def perform_cluster(self, actions: list[Any]) -> None:
        w = self.world
        for a in actions:
            if isinstance(a, Assign):
                task = w.spec.task(a.task_id)
                w.assign_count += 1
                self.post(
                    Assigned(
                        RUN, a.task_id, a.assigned_to, self.node_id, task.agent, task.deps, a.epoch, a.attempt,
                        TaskInput(prompt=task.prompt), None,
                    )
                )
            elif isinstance(a, Revoke):
                self.post(Revoked(RUN, a.task_id, self.node_id, a.epoch, a.reason))
            elif self.scheduler is None:
                continue
            elif isinstance(a, AttemptStarted):
                self.perform_scheduler(self.scheduler.attempt_started(a.task_id, a.attempt, w.now))
            elif isinstance(a, Succeeded):
                w.succeeded.append((f"{self.node_id}/{self.term}", a.task_id))
                self.perform_scheduler(self.scheduler.succeeded(a.task_id, a.attempt, a.output or "", w.now))
            elif isinstance(a, AttemptFailed):
                self.perform_scheduler(self.scheduler.failed(a.task_id, a.attempt, a.reason, w.now))

    def perform_worker(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Claim):
                self.post(Claimed(a.run_id, a.task_id, self.node_id, a.epoch))
            elif isinstance(a, Run):
                assert a.task_id not in self.copies, f"{self.node_id} runs {a.task_id} twice"
                self.copies[a.task_id] = a.epoch
                self.world.executions.append((self.node_id, a.task_id, a.epoch))
            elif isinstance(a, Stop):
                assert self.copies.pop(a.task_id) == a.epoch
                self.world.stops.append((self.node_id, a.task_id, a.epoch))
            elif isinstance(a, PostResult):
                self.post(Result(a.run_id, a.task_id, self.node_id, a.epoch, a.outcome, a.output, None, a.reason))

    # -- the node's own life ---------------------------------------------------------------------

    def finish(self, task_id: str, outcome: str = "completed") -> None:
        """The local copy of ``task_id`` ends."""
        epoch = self.copies.pop(task_id)
        self.perform_worker(self.worker.finished(RUN, task_id, epoch, outcome, f"out:{task_id}"))

    def tick(self) -> None:
        if self.scheduler is not None and self.up and self.connected:
            self.perform_cluster(self.cluster.tick(self.world.now))
            self.perform_scheduler(self.scheduler.tick(self.world.now))


@dataclass
class World:
    spec: DagSpec
    node_ids: tuple[str, ...]
    mode: Mode = "matrix"
    slots: int = 2
    workers: tuple[str, ...] | None = None  #: federation's --workers (default: every node)
    timeline: list[Posted] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)  #: declared dead (what the observers say)
    now: float = 0.0
    started: bool = False
    statuses: list[tuple[str, TaskStatusChanged]] = field(default_factory=list)
    finished: list[tuple[str, RunStatus]] = field(default_factory=list)
    succeeded: list[tuple[str, str]] = field(default_factory=list)
    executions: list[tuple[str, str, int]] = field(default_factory=list)
    stops: list[tuple[str, str, int]] = field(default_factory=list)
    assign_count: int = 0
    end: tuple[str, str] | None = None  #: (coordinator, run status) of the RunEnded that counts

    @property
    def first_coordinator(self) -> str:
        return self.node_ids[0]

    @property
    def ended(self) -> bool:
        return self.end is not None

    def believed_live(self) -> set[str]:
        return set(self.node_ids) - self.dead

    def start(self) -> None:
        for node_id in self.node_ids:
            self.nodes[node_id] = Node(node_id, self)
        self.nodes[self.first_coordinator].check_leadership()

    def leader(self) -> Node | None:
        leaders = [n for n in self.nodes.values() if n.scheduler is not None]
        return leaders[0] if leaders else None

    def settle(self, rounds: int = 50) -> None:
        """Every node reads everything (and leaders tick) until nothing new happens."""
        for _ in range(rounds):
            self.now += 1
            moved = sum(n.read() for n in self.nodes.values())
            before = len(self.timeline)
            for n in self.nodes.values():
                n.tick()
                n.check_leadership()
            moved += sum(n.read() for n in self.nodes.values())
            if not moved and len(self.timeline) == before:
                return

    def declare_dead(self, node_id: str) -> None:
        self.dead.add(node_id)
        for n in self.nodes.values():
            if n.node_id != node_id and n.up:
                n.perform_cluster(n.cluster.node_down(node_id))
                n.check_leadership()

    def declare_alive(self, node_id: str) -> None:
        self.dead.discard(node_id)
        for n in self.nodes.values():
            if n.up:
                n.perform_cluster(n.cluster.node_up(node_id))
                n.check_leadership()

    def kill(self, node_id: str) -> None:
        self.nodes[node_id].up = False

    def restart(self, node_id: str) -> None:
        n = self.nodes[node_id]
        n.up, n.connected = True, True
        n.boot()

    def cut(self, node_id: str) -> None:
        self.nodes[node_id].connected = False

    def reconnect(self, node_id: str) -> None:
        n = self.nodes[node_id]
        n.connected = True
        queued, n.outbox = n.outbox, []
        self.timeline.extend(queued)

    def finish_everything(self, rounds: int = 60) -> None:
        """Every copy completes, repeatedly, until the run is over."""
        for _ in range(rounds):
            self.settle()
            if self.ended:
                return
            for n in self.nodes.values():
                if n.up and n.connected:
                    for task_id in list(n.copies):
                        n.finish(task_id)

    # -- what must hold -----------------------------------------------------------------------------

    def check(self) -> None:
        """Every task ended once, in one final state; none counted complete twice.

        A coordinator that lost the run may have written a final status its
        successor writes again (its write reached the room after the
        takeover): the same status, never a different one, and never twice
        from one coordinator. The record that counts is the ledger, the same
        on every node."""
        assert self.end is not None, "the run did not finish"
        readers = [n for n in self.nodes.values() if n.up and n.cursor == len(self.timeline)]
        assert readers
        ledgers = [n.cluster.ledger for n in readers]
        # Every node that read the room agrees, task by task.
        views = {tuple(sorted((t, r.phase, r.ended, r.epoch) for t, r in ledger.tasks.items())) for ledger in ledgers}
        assert len(views) == 1, views
        ledger = ledgers[0]
        for task in self.spec.tasks:
            record = ledger.tasks[task.id]
            assert record.phase in ("completed", "ended"), f"{task.id} did not end: {record}"
            if record.phase == "completed":
                assert record.announced, f"{task.id} completed but its coordinator never said so"
        completed = [t for t, r in ledger.tasks.items() if r.phase == "completed"]
        assert ledger.completed == len(completed), "a task was counted complete twice"
        failed = any(r.phase == "ended" and r.ended == "failed" for r in ledger.tasks.values())
        assert self.end[1] == ("failed" if failed else "completed"), (self.end, ledger.tasks)
        counted: dict[tuple[str, str], int] = {}
        for node_id, task_id in self.succeeded:
            counted[(node_id, task_id)] = counted.get((node_id, task_id), 0) + 1
        assert all(n == 1 for n in counted.values()), f"a coordinator counted a task complete twice: {counted}"


def chain_spec(n: int = 3, retries: int = 0) -> DagSpec:
    tasks = [
        {"id": f"t{i}", "deps": [f"t{i - 1}"] if i else [], "agent": "a", "prompt": f"p{i}", "retries": retries}
        for i in range(n)
    ]
    return parse_dag({"dag_id": "chain", "tasks": tasks})


def fan_spec(n: int = 3) -> DagSpec:
    return parse_dag({"dag_id": "fan", "tasks": [{"id": f"t{i}", "agent": "a", "prompt": "p"} for i in range(n)]})


def world(
    spec: DagSpec,
    mode: Mode = "matrix",
    nodes: tuple[str, ...] = ("a", "b", "c"),
    slots: int = 2,
    workers: tuple[str, ...] | None = None,
) -> World:
    w = World(spec, nodes, mode=mode, slots=slots, workers=workers)
    w.start()
    return w


# -- scenarios ---------------------------------------------------------------------------------------


def test_two_nodes_race_for_an_offer_the_first_claim_wins_the_other_backs_off() -> None:
    w = world(fan_spec(1), nodes=("a", "b", "c"))
    a, b, c = (w.nodes[x] for x in "abc")
    # a leads and has offered t0 (on start); nobody has read the offer yet.
    c.up = False  # c sits this one out
    b.read()  # b claims first
    a.read()  # a claims second (its own offer)
    assert [e for e in w.timeline if isinstance(e, Claimed)] == [Claimed(RUN, "t0", "b", 1), Claimed(RUN, "t0", "a", 1)]
    b.read()
    a.read()
    assert b.copies == {"t0": 1} and a.copies == {}
    assert a.worker.claims_lost == 1 and a.worker.free == w.slots  # backed off: its slot is free again
    b.finish("t0")
    w.settle()
    w.check()
    assert w.executions == [("b", "t0", 1)]


def test_federation_assigns_to_named_live_nodes_least_loaded() -> None:
    w = world(fan_spec(4), mode="federation", nodes=("a", "b"))
    w.settle()
    runs = {n: sorted(node.copies) for n, node in w.nodes.items()}
    assert runs == {"a": ["t0", "t2"], "b": ["t1", "t3"]}
    w.finish_everything()
    w.check()


def test_a_node_dying_mid_task_is_taken_over_with_epoch_plus_one_and_its_late_result_ignored() -> None:
    w = world(fan_spec(1), mode="federation", nodes=("a", "b", "c"), workers=("b", "c"))
    w.settle()
    holder = w.nodes["b"]
    assert holder.copies == {"t0": 1}
    w.cut(holder.node_id)  # cut off: alive, but the others declare it dead
    w.declare_dead(holder.node_id)
    w.settle()
    second = w.nodes["c"]
    assert second.copies == {"t0": 2}
    # The first holder finishes its copy and its result reaches the room late.
    holder.finish("t0")
    w.reconnect(holder.node_id)
    w.settle()
    leader = w.leader()
    assert leader is not None and leader.cluster.stale_results_ignored == 1
    second.finish("t0")
    w.settle()
    w.check()
    assert w.succeeded == [("a/1", "t0")] and leader is w.nodes["a"]


def test_a_partitioned_node_back_stops_its_stale_task() -> None:
    w = world(fan_spec(1), mode="matrix", nodes=("a", "b"), slots=1)
    w.nodes["b"].read()
    w.nodes["a"].read()  # a offered; b reads the offer before a claims anything
    w.settle()
    holder = next(n for n in w.nodes.values() if n.copies)
    other = w.nodes["b" if holder.node_id == "a" else "a"]
    w.cut(holder.node_id)
    w.declare_dead(holder.node_id)
    w.settle()
    if other.node_id != w.first_coordinator:
        # The holder led: other took the run over and re-offered the task.
        assert other.scheduler is not None
    assert other.copies == {"t0": 2}
    w.reconnect(holder.node_id)
    w.declare_alive(holder.node_id)
    w.settle()
    assert holder.copies == {} and (holder.node_id, "t0", 1) in w.stops
    other.finish("t0")
    w.finish_everything()
    w.check()


def test_the_coordinator_dying_the_lowest_live_id_leads_and_the_run_completes() -> None:
    w = world(chain_spec(3), mode="matrix", nodes=("a", "b", "c"))
    w.settle()
    holder = next(n for n in w.nodes.values() if n.copies)
    holder.finish("t0")
    w.settle()
    w.kill("a")
    w.declare_dead("a")
    w.settle()
    b = w.nodes["b"]
    assert b.cluster.ledger.coordinator == "b" and b.cluster.ledger.coordinator_epoch == 1
    assert b.scheduler is not None and b.scheduler.task_status("t0") is TaskStatus.COMPLETED
    assert w.nodes["c"].scheduler is None
    w.finish_everything()
    w.check()
    assert w.finished == [("b", RunStatus.COMPLETED)]
    assert [t for _, t in w.succeeded].count("t0") == 1


def test_takeover_adopts_a_task_a_live_node_still_runs() -> None:
    w = world(fan_spec(1), mode="matrix", nodes=("a", "b", "c"))
    w.nodes["c"].read()  # c claims first
    w.settle()
    assert w.nodes["c"].copies == {"t0": 1}
    w.kill("a")
    w.declare_dead("a")
    w.settle()
    assert w.nodes["b"].scheduler is not None
    assert w.nodes["c"].copies == {"t0": 1}, "the task of a live node is not moved by a takeover"
    w.nodes["c"].finish("t0")
    w.settle()
    w.check()
    assert w.executions == [("c", "t0", 1)]


def test_a_homeserver_restart_moves_nothing_when_no_one_is_declared_dead() -> None:
    # The observers' side of this (offline events that fire on the restart
    # are not deaths) is tests/dag/test_dag_liveness.py; here the run goes
    # on across a pause of every connection with nobody declared dead.
    w = world(fan_spec(2), mode="federation", nodes=("a", "b"))
    w.settle()
    before = {n: dict(node.copies) for n, node in w.nodes.items()}
    for n in w.node_ids:
        w.cut(n)
    w.settle()
    for n in w.node_ids:
        w.reconnect(n)
    w.settle()
    assert {n: dict(node.copies) for n, node in w.nodes.items()} == before
    assert w.assign_count == 2
    w.finish_everything()
    w.check()


def restart_homeserver(w: World, observers: dict[str, Observer], killed: str | None = None) -> None:
    """The homeserver goes away at 100 and is back at 130; it fires every node's
    overdue delayed offline as it starts; the live nodes re-announce within
    their restart period (5 s). Deaths the observers confirm are declared."""
    for o in observers.values():
        o.sync_failed(100)
    for o in observers.values():
        o.sync_ok(130)
    for node_id in w.node_ids:
        for o in observers.values():
            o.status(node_id, "offline", 130.5)
    for node_id in w.node_ids:
        if node_id != killed:
            for o in observers.values():
                o.status(node_id, "online", 134)
    deaths = {a.node_id for o in observers.values() for a in o.tick(150) if isinstance(a, NodeDead)}
    for node_id in sorted(deaths):
        w.declare_dead(node_id)


def observers_of(w: World) -> dict[str, Observer]:
    observers = {n: Observer(me=n) for n in w.node_ids}
    for o in observers.values():
        for n in w.node_ids:
            o.status(n, "online", 0)
    return observers


def test_a_homeserver_restart_takes_nothing_over() -> None:
    w = world(fan_spec(2), mode="federation", nodes=("a", "b", "c"), workers=("b", "c"))
    w.settle()
    before = {n: dict(node.copies) for n, node in w.nodes.items()}
    observers = observers_of(w)
    restart_homeserver(w, observers)
    w.settle()
    assert w.dead == set()
    assert {n: dict(node.copies) for n, node in w.nodes.items()} == before
    assert w.assign_count == 2 and w.nodes["a"].cluster.reassigned == 0
    assert all(o.spared == 2 for o in observers.values())
    w.finish_everything()
    w.check()


def test_a_node_killed_during_a_homeserver_restart_is_taken_over() -> None:
    w = world(fan_spec(2), mode="federation", nodes=("a", "b", "c"), workers=("b", "c"))
    w.settle()
    w.kill("b")
    restart_homeserver(w, observers_of(w), killed="b")
    w.settle()
    assert w.dead == {"b"}
    assert w.nodes["c"].copies == {"t0": 2, "t1": 1}
    w.finish_everything()
    w.check()


def test_a_failed_result_is_retried_with_a_new_epoch() -> None:
    w = world(chain_spec(1, retries=1), mode="matrix", nodes=("a", "b"))
    w.settle()
    holder = next(n for n in w.nodes.values() if n.copies)
    holder.finish("t0", "failed")
    w.settle()
    again = next(n for n in w.nodes.values() if n.copies)
    assert again.copies == {"t0": 2}
    again.finish("t0")
    w.settle()
    w.check()


# -- the model ------------------------------------------------------------------------------------------


step = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("finish"), st.integers(0, 3), st.sampled_from(["completed", "completed", "failed"])),
    st.tuples(st.just("kill"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("cut"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("return"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("false_alarm"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0)),
)


@st.composite
def dags(draw: st.DrawFn) -> DagSpec:
    n = draw(st.integers(1, 5))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        tasks.append(
            {
                "id": f"t{i}",
                "deps": [f"t{d}" for d in deps],
                "agent": "a",
                "prompt": "p",
                "retries": draw(st.integers(0, 1)),
                # Timeouts make the coordinator revoke attempts (a time step moves 5 s).
                "timeout": draw(st.sampled_from([12, 3600])),
            }
        )
    return parse_dag({"dag_id": "model", "tasks": tasks})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=dags(),
    mode=st.sampled_from(["matrix", "federation"]),
    n_nodes=st.integers(2, 4),
    slots=st.integers(1, 3),
    coordinator_works=st.booleans(),
    steps=st.lists(step, max_size=60),
)
def test_model_every_task_ends_once_and_none_is_counted_complete_twice(
    spec: DagSpec, mode: Mode, n_nodes: int, slots: int, coordinator_works: bool, steps: list[tuple[str, int, Any]]
) -> None:
    ids = tuple("abcd"[:n_nodes])
    workers = ids if coordinator_works else ids[1:]
    w = world(spec, mode=mode, nodes=ids, slots=slots, workers=workers)
    for kind, index, arg in steps:
        w.now += 1
        node = w.nodes[ids[index % n_nodes]]
        if kind == "read":
            node.read(arg)
        elif kind == "finish" and node.up and node.copies:
            node.finish(sorted(node.copies)[0], arg)
        elif kind == "kill" and node.up:
            w.kill(node.node_id)
            w.declare_dead(node.node_id)
        elif kind == "cut" and node.connected:
            w.cut(node.node_id)
            w.declare_dead(node.node_id)
        elif kind == "false_alarm":
            w.declare_dead(node.node_id)  # the observers are wrong: it is alive and connected
        elif kind == "return":
            if not node.up:
                w.restart(node.node_id)
            elif not node.connected:
                w.reconnect(node.node_id)
            w.declare_alive(node.node_id)
        elif kind == "tick":
            w.now += 5
            for n in w.nodes.values():
                n.tick()
    # Heal: every node back, nobody dead, everything finishes.
    for node_id in ids:
        node = w.nodes[node_id]
        if not node.up:
            w.restart(node_id)
        elif not node.connected:
            w.reconnect(node_id)
        w.declare_alive(node_id)
    w.finish_everything()
    w.check()
