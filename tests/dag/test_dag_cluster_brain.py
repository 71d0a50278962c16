"""The cluster driver's pure brain (dag/actors/cluster_brain.py): several brains
over one simulated cluster room and heartbeat room, each event with the
Matrix account that sent it. What the brain adds to the machines of
test_dag_cluster_world.py: routing by run id, the identity rule, the spec
event, replay then catch-up, what is posted and recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as hs

from lambda_actors.dag import status as st
from lambda_actors.dag.actors.cluster_brain import (
    CUT_MARKER,
    ClusterBrain,
    ClusterRefused,
    Post,
    Record,
    RoomEvent,
    StartTask,
    StopTask,
    _cut,
)
from lambda_actors.dag.heartbeat import NODE_STATUS
from lambda_actors.dag.scheduler import RunStatusChanged, TaskStatusChanged
from lambda_actors.dag.spec import DagSpec, DagSpecError, parse_dag
from lambda_actors.dag.status import dag_toml, parse_run_spec

WALL = 1_800_000_000.0


def spec(n: int = 2, chain: bool = True, prompt: str = "p") -> DagSpec:
    tasks = [
        {"id": f"t{i}", "deps": [f"t{i - 1}"] if chain and i else [], "agent": "agent-0", "prompt": prompt}
        for i in range(n)
    ]
    return parse_dag({"dag_id": "d", "tasks": tasks})


@dataclass
class Net:
    """The rooms: every post appended with its sender; each brain reads at its own pace."""

    room: list[RoomEvent] = field(default_factory=list)
    brains: dict[str, ClusterBrain] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    copies: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    records: dict[str, list[Record]] = field(default_factory=dict)
    started: list[StartTask] = field(default_factory=list)
    stopped: list[StopTask] = field(default_factory=list)
    now: float = 0.0
    seq: int = 0
    #: The heartbeat room's state: each node's last status event.
    state: dict[str, RoomEvent] = field(default_factory=dict)
    #: Nodes cut off from the homeserver: their posts wait here (their client retries).
    outboxes: dict[str, list[RoomEvent]] = field(default_factory=dict)
    #: The homeserver's content repository: what posts' attachments uploaded.
    media: dict[str, bytes] = field(default_factory=dict)
    #: Uploads refused for good: the driver posts the event with a line saying so.
    refuse_uploads: bool = False

    def add(self, node_id: str, *, accept: bool = True, slots: int = 2, announce: bool = True) -> ClusterBrain:
        brain = ClusterBrain(node_id, f"@{node_id}:hs", accept_remote_tasks=accept, slots=slots)
        self.brains[node_id] = brain
        self.cursors[node_id] = 0
        self.copies[node_id] = {}
        self.records[node_id] = []
        for event in self.state.values():
            # A (re)started node reads the heartbeat room's state first.
            self.perform(node_id, brain.heartbeat_event(event, self.now))
        if announce:
            self.status(node_id, "online")
        return brain

    def status(self, node_id: str, status: str, sender: str | None = None) -> None:
        event = self._event(sender or f"@{node_id}:hs", NODE_STATUS, {"node_id": node_id, "status": status}, node_id)
        if sender is None:
            self.state[node_id] = event
        for name, brain in self.brains.items():
            self.perform(name, brain.heartbeat_event(event, self.now))
            if self.cursors[name] == len(self.room):
                self.perform(name, brain.settle())

    def catch_up(self, node_id: str) -> None:
        """A (re)started brain: replays the room, then acts."""
        brain = self.brains[node_id]
        for event in self.room:
            self.perform(node_id, brain.replay(self.resolved(event), self.now, WALL))
        self.cursors[node_id] = len(self.room)
        self.perform(node_id, brain.caught_up(self.now))

    def _event(self, sender: str, event_type: str, content: Any, state_key: str | None = None) -> RoomEvent:
        self.seq += 1
        return RoomEvent(f"$e{self.seq}", sender, event_type, dict(content), state_key)

    def resolved(self, event: RoomEvent) -> RoomEvent:
        """As the driver hands a result to its brain: an output sent by URI read back."""
        url = event.content.get("output_url")
        if event.type != st.TASK_RESULT or "output" in event.content or url not in self.media:
            return event
        return RoomEvent(event.event_id, event.sender, event.type, {**event.content, "output": self.media[url].decode()})

    def perform(self, node_id: str, actions: list[Any]) -> None:
        brain = self.brains[node_id]
        for a in actions:
            if isinstance(a, Post):
                content = dict(a.content)
                if a.attachment is not None and self.refuse_uploads:
                    content[a.attachment.key] = "refused by the homeserver: M_TOO_LARGE"
                elif a.attachment is not None:
                    uri = f"mxc://hs/m{len(self.media)}"
                    self.media[uri] = a.attachment.data
                    content[a.attachment.key] = uri
                event = self._event(brain.account, a.event_type, content, a.state_key)
                if node_id in self.outboxes:
                    self.outboxes[node_id].append(event)
                else:
                    self.room.append(event)
            elif isinstance(a, StartTask):
                self.started.append(a)
                self.copies[node_id][(a.run_id, a.task_id)] = a.epoch
            elif isinstance(a, StopTask):
                self.stopped.append(a)
                self.copies[node_id].pop((a.run_id, a.task_id), None)
            elif isinstance(a, Record):
                self.records[node_id].append(a)

    def settle(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = False
            for node_id, brain in self.brains.items():
                while self.cursors[node_id] < len(self.room):
                    event = self.room[self.cursors[node_id]]
                    self.cursors[node_id] += 1
                    self.perform(node_id, brain.cluster_event(self.resolved(event), self.now, WALL))
                    moved = True
                self.perform(node_id, brain.settle())  # caught up with the room
            if not moved:
                return

    def finish_all(self, outcome: str = "completed") -> None:
        for _ in range(20):
            self.settle()
            done = False
            for node_id, copies in self.copies.items():
                for (run_id, task_id), epoch in list(copies.items()):
                    del copies[(run_id, task_id)]
                    self.perform(node_id, self.brains[node_id].finished(run_id, task_id, epoch, outcome, f"out-{task_id}"))
                    done = True
            if not done:
                self.settle()
                return

    def of(self, event_type: str) -> list[RoomEvent]:
        return [e for e in self.room if e.type == event_type]


def confirm(net: Net, node_id: str, the_spec: DagSpec, run_id: str = "run-1", mode: str = "matrix", workers: tuple[str, ...] = ()) -> str:
    net.perform(node_id, net.brains[node_id].confirm(run_id, the_spec, mode=mode, workers=workers, wall=WALL))
    return run_id


def net_of(*nodes: str, accept: dict[str, bool] | None = None) -> Net:
    net = Net()
    for node_id in nodes:
        net.add(node_id, accept=(accept or {}).get(node_id, True), announce=False)
    for node_id in nodes:
        net.status(node_id, "online")
    for node_id in nodes:
        net.catch_up(node_id)
    return net


def test_a_run_offered_in_mode_matrix_is_claimed_run_and_completed_once() -> None:
    net = net_of("a", "b", accept={"a": False})
    confirm(net, "a", spec(2))
    net.finish_all()
    assert [s.task_id for s in net.started] == ["t0", "t1"] and {tuple(s.run_id for s in net.started)} == {("run-1", "run-1")}
    assert [e.content["claimed_by"] for e in net.of(st.TASK_CLAIMED)] == ["b", "b"]
    assert [e.content["status"] for e in net.of(st.TASK_STATUS)] == ["completed", "completed"]
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@a:hs"]
    # Only the leader records the run; its final record says completed.
    assert net.records["b"] == []
    finals = [r.change for r in net.records["a"] if isinstance(r.change, RunStatusChanged)]
    assert [str(c.status) for c in finals] == ["running", "completed"]
    # The second prompt was rendered with the first's output.
    assert "out-t0" not in net.of(st.TASK_ASSIGNED)[1].content["prompt"]  # the spec's prompt names no output
    assert "run-1" in net.brains["a"].ended and "run-1" in net.brains["b"].ended


def test_a_claim_sent_by_another_account_than_the_node_it_names_does_not_count() -> None:
    net = net_of("a", "b", "c", accept={"a": False})
    net.brains["c"].worker.accept_remote_tasks = False
    confirm(net, "a", spec(1))
    # Before anyone reads the offer, b's account claims it in c's name
    # (were it counted, c would hold the task and b's own claim would lose).
    net.room.append(
        RoomEvent("$forged", "@b:hs", st.TASK_CLAIMED, {"run_id": "run-1", "task_id": "t0", "claimed_by": "c", "epoch": 1})
    )
    net.settle()
    assert net.copies["c"] == {} and net.copies["b"] == {("run-1", "t0"): 1}
    assert any(note[0] == "dag.cluster.not_its_node" for note in net.brains["a"].notes)
    net.finish_all()
    assert [(e.content["claimed_by"], e.sender) for e in net.of(st.TASK_CLAIMED)] == [("c", "@b:hs"), ("b", "@b:hs")]
    assert [e.content["status"] for e in net.of(st.TASK_STATUS)] == ["completed"]


def test_a_second_account_writing_a_nodes_status_is_an_impostor() -> None:
    net = net_of("a", "b")
    net.status("b", "stopped", sender="@mallory:hs")
    assert net.brains["a"].counts.impostors == 1
    assert "b" in net.brains["a"].observer.live()  # the impostor's `stopped` said nothing


def test_federation_assigns_by_name_and_needs_workers() -> None:
    net = net_of("a", "b", "c")
    with pytest.raises(ClusterRefused, match="--workers node-a,node-b"):
        confirm(net, "a", spec(1), mode="federation")
    with pytest.raises(ClusterRefused, match="is for mode federation"):
        confirm(net, "a", spec(1), mode="matrix", workers=("b",))
    with pytest.raises(ClusterRefused, match="not a node id"):
        confirm(net, "a", spec(1), mode="federation", workers=("b c",))
    with pytest.raises(ClusterRefused, match="no node 'x' has ever announced itself"):
        confirm(net, "a", spec(1), mode="federation", workers=("c", "x"))
    confirm(net, "a", spec(3, chain=False), mode="federation", workers=("c",))
    net.finish_all()
    assert {e.content["assigned_to"] for e in net.of(st.TASK_ASSIGNED)} == {"c"}
    assert {(s.task_id, s.epoch) for s in net.started} == {("t0", 1), ("t1", 1), ("t2", 1)}
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@a:hs"]


def test_a_spec_too_large_for_one_event_is_refused_at_confirm() -> None:
    net = net_of("a")
    with pytest.raises(ClusterRefused, match="60000 a Matrix event may hold"):
        confirm(net, "a", spec(8, prompt="x" * 9000))
    assert net.room == [] or all(e.type != st.RUN_SPEC for e in net.room)


def test_the_coordinator_stopping_the_lowest_live_node_takes_over_and_adopts_its_task() -> None:
    net = net_of("a", "b", "c", accept={"a": False, "b": False})
    confirm(net, "a", spec(2))
    net.settle()
    assert net.copies["c"] == {("run-1", "t0"): 1}
    net.status("a", "stopped")
    net.settle()
    leaders = [(e.content["node_id"], e.content["epoch"], e.sender) for e in net.of(st.RUN_COORDINATOR)]
    assert leaders == [("a", 1, "@a:hs"), ("b", 2, "@b:hs")]
    assert net.brains["b"].leads("run-1") and not net.brains["c"].leads("run-1")
    assert net.copies["c"] == {("run-1", "t0"): 1}, "the task of a live node stays where it is"
    net.finish_all()
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@b:hs"]
    assert [(s.task_id, s.epoch) for s in net.started] == [("t0", 1), ("t1", 1)]
    # The new leader's store learns the run from its own records.
    assert any(isinstance(r.change, TaskStatusChanged) for r in net.records["b"])


def test_a_run_paused_stays_paused_when_another_node_takes_it_over() -> None:
    net = net_of("a", "b", "c", accept={"a": False, "b": False})
    confirm(net, "a", spec(2))
    net.settle()
    net.perform("a", net.brains["a"].control("run-1", "pause", net.now))
    net.settle()
    net.status("a", "stopped")
    net.finish_all()  # t0 ends on c; the run is paused: nothing more starts
    assert net.brains["b"].leads("run-1") and [s.task_id for s in net.started] == ["t0"]
    assert net.of(st.RUN_COMPLETED) == []
    net.perform("b", net.brains["b"].control("run-1", "resume", net.now))
    net.finish_all()
    assert [s.task_id for s in net.started] == ["t0", "t1"]
    assert [e.sender for e in net.of(st.RUN_PAUSED)] == ["@a:hs"]
    assert [e.sender for e in net.of(st.RUN_STARTED)] == ["@a:hs", "@b:hs"]  # a's start, b's resume
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@b:hs"]


def test_a_worker_declared_dead_has_its_task_reassigned_with_a_new_epoch_and_stops_it_when_back() -> None:
    net = net_of("a", "b", "c", accept={"a": False, "c": False})
    confirm(net, "a", spec(1))
    net.settle()
    assert net.copies["b"] == {("run-1", "t0"): 1}
    net.brains["c"].worker.accept_remote_tasks = True
    net.status("b", "offline")  # its delayed offline fired: dead at once
    # b is cut off: it reads nothing for now.
    cursor_b = net.cursors["b"]
    net.cursors["b"] = 10**9
    net.settle()
    assert net.copies["c"] == {("run-1", "t0"): 2}
    net.cursors["b"] = cursor_b
    net.settle()  # b reads the reassignment it missed: its stale copy stops
    assert net.copies["b"] == {} and [(s.task_id, s.epoch) for s in net.stopped] == [("t0", 1)]
    net.finish_all()
    assert [e.content["status"] for e in net.of(st.TASK_STATUS)] == ["completed"]
    assert "run-1" in net.brains["a"].ended and net.brains["a"].counts.reassigned == 1  # kept past the run's end
    assert net.brains["a"].current_stats().reassigned == 1


def test_a_restarted_node_replays_the_room_and_runs_the_task_it_held_again() -> None:
    net = net_of("a", "b", accept={"a": False})
    confirm(net, "a", spec(1))
    net.settle()
    assert net.copies["b"] == {("run-1", "t0"): 1}
    # b restarts (not declared dead): its copy died with it.
    net.copies["b"] = {}
    net.add("b", announce=False)
    net.catch_up("b")
    assert net.copies["b"] == {("run-1", "t0"): 1}
    assert len(net.of(st.TASK_CLAIMED)) == 1  # nothing claimed twice
    net.finish_all()
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@a:hs"]


def test_a_restarted_coordinator_resumes_leading_from_the_room() -> None:
    net = net_of("a", "b", accept={"a": False})
    confirm(net, "a", spec(2))
    net.settle()
    net.add("a", accept=False, announce=False)
    net.catch_up("a")
    assert net.brains["a"].leads("run-1")
    net.finish_all()
    assert len(net.of(st.RUN_SPEC)) == 1
    assert [e.content["status"] for e in net.of(st.TASK_STATUS)] == ["completed", "completed"]
    assert [e.sender for e in net.of(st.RUN_COMPLETED)] == ["@a:hs"]


def test_cancel_is_the_leaders_and_revokes_what_runs() -> None:
    net = net_of("a", "b", accept={"a": False})
    confirm(net, "a", spec(2))
    net.settle()
    with pytest.raises(ClusterRefused, match="node a leads it"):
        net.perform("b", net.brains["b"].control("run-1", "cancel", net.now))
    net.perform("a", net.brains["a"].control("run-1", "cancel", net.now))
    net.settle()
    assert [e.content["task_id"] for e in net.of(st.TASK_REVOKED)] == ["t0"]
    assert net.copies["b"] == {}
    assert [e.sender for e in net.of(st.RUN_CANCELLED)] == ["@a:hs"]


def test_an_input_or_output_too_long_for_its_event_travels_whole_through_the_content_repository() -> None:
    net = net_of("a", "b", accept={"a": False})
    big = "é" * (st.RESULT_INLINE_LIMIT // 2 + 1)  # one byte over the inline limit
    chained = parse_dag({"dag_id": "d", "tasks": [
        {"id": "t0", "agent": "agent-0", "prompt": "p"},
        {"id": "t1", "deps": ["t0"], "agent": "agent-0", "prompt": "{{ t0.output }}"},
    ]})
    confirm(net, "a", chained)
    net.settle()
    net.perform("b", net.brains["b"].finished("run-1", "t0", 1, "completed", big))
    del net.copies["b"][("run-1", "t0")]
    net.settle()
    [result] = net.of(st.TASK_RESULT)
    assert "output" not in result.content and net.media[result.content["output_url"]] == big.encode()
    assert [r.change.output for r in net.records["a"] if isinstance(r.change, TaskStatusChanged) and r.change.task_id == "t0"][-1] == big
    t1 = net.started[-1]
    assert (t1.task_id, t1.prompt) == ("t1", "") and t1.input_url is not None
    assert st.parse_task_input(json.loads(net.media[t1.input_url])) == st.TaskInput(prompt=big)
    [_, offer] = net.of(st.TASK_ASSIGNED)
    assert "prompt" not in offer.content and offer.content["input_url"] == t1.input_url


def test_an_input_the_homeserver_refused_to_store_fails_its_attempt_and_the_run_ends() -> None:
    net = net_of("a", "b", accept={"a": False})
    net.refuse_uploads = True
    confirm(net, "a", spec(1, prompt="x" * (st.INPUT_INLINE_LIMIT + 1)))
    net.settle()
    assert net.started == []
    [result] = net.of(st.TASK_RESULT)
    assert result.content["outcome"] == "failed" and "not an mxc:// URI" in result.content["reason"]
    assert [e.sender for e in net.of(st.RUN_FAILED)] == ["@a:hs"]


def test_an_output_too_long_to_upload_is_cut_with_a_marker() -> None:
    assert _cut("short", 100) == "short"
    cut = _cut("é" * 1000, 500)
    assert len(cut.encode()) <= 500 and cut.endswith(CUT_MARKER.format(n=2000 - 300, limit=500))


def test_the_cluster_counts_are_on_metrics_only_where_a_driver_runs() -> None:
    from prometheus_client.exposition import generate_latest

    from lambda_actors.node.metrics import BotCounters

    counts: dict[str, int] | None = None
    counters = BotCounters()
    counters.watch_cluster(lambda: counts)
    assert b"lambda_dag_cluster" not in generate_latest(counters.registry)
    counts = {"reassigned": 2, "stale_results_ignored": 1, "claims_lost": 3}
    text = generate_latest(counters.registry).decode()
    assert "lambda_dag_cluster_reassigned_total 2.0" in text
    assert "lambda_dag_cluster_stale_results_ignored_total 1.0" in text
    assert "lambda_dag_cluster_claims_lost_total 3.0" in text


_TEXT = hs.text(hs.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    prompts=hs.lists(_TEXT, min_size=1, max_size=4),
    owner=hs.one_of(hs.none(), hs.just("@o:hs")),
    command=hs.lists(_TEXT.filter(bool), min_size=1, max_size=3),
    max_workers=hs.one_of(hs.none(), hs.integers(1, 64)),
)
def test_the_spec_event_carries_the_dag_as_toml_text_that_reads_back_as_the_same_version(
    prompts: list[str], owner: str | None, command: list[str], max_workers: int | None
) -> None:
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "agent": "agent-0", "prompt": p.replace("{{", "{ {"), "retries": i % 3, "timeout": 60 + i}
        for i, p in enumerate(prompts)
    ]
    tasks.append({"id": "cmd", "command": command, "workdir": "/srv/x y", "deps": ["t0"]})
    document: dict[str, Any] = {"dag_id": "rt", "owner": owner, "max_workers": max_workers, "priority": "high", "tasks": tasks}
    try:
        original = parse_dag({k: v for k, v in document.items() if v is not None}, allow_commands=True)
    except DagSpecError:
        assume(False)  # not a DAG (an empty prompt, a stray brace): nothing to carry
        return
    text = dag_toml(original.to_mapping())
    assert parse_dag(text, allow_commands=True).version == original.version
    net = net_of("a")
    posted = net.brains["a"].confirm("run-1", original, mode="matrix", workers=(), wall=WALL)[0]
    parsed = parse_run_spec(posted.content)
    assert parsed is not None and parsed.spec == text and parsed.version == original.version


# -- the model: brains over one room, nodes killed, restarted, reading at their own pace ----------------


def fold(net: Net, the_spec: DagSpec, run_id: str = "run-1") -> Any:
    """The run's ledger as a fresh reader folds the room (the identity rule applied)."""
    from lambda_actors.dag.cluster import Ledger, task_ended

    first = next(e for e in net.room if e.type == st.RUN_SPEC)
    ledger = Ledger(run_id, first.content["node_id"], task_ids=[t.id for t in the_spec.tasks])
    for e in net.room:
        node = e.sender.removeprefix("@").removesuffix(":hs")
        if e.type == st.TASK_STATUS:
            ended = task_ended(e.content, node)
            if ended is not None:
                ledger.observe(ended)
        elif e.type in st.CLUSTER_EVENT_TYPES:
            parsed = st.parse_cluster_event(e.type, e.content)
            if parsed is not None and net.brains["a"].named_node(e) == node:
                ledger.observe(parsed)
    return ledger


model_step = hs.one_of(
    hs.tuples(hs.just("read"), hs.integers(0, 2), hs.integers(1, 30)),
    hs.tuples(hs.just("read"), hs.integers(0, 2), hs.integers(1, 30)),
    hs.tuples(hs.just("finish"), hs.integers(0, 2), hs.sampled_from(["completed", "completed", "failed"])),
    hs.tuples(hs.just("finish"), hs.integers(0, 2), hs.sampled_from(["completed", "completed", "failed"])),
    hs.tuples(hs.just("kill"), hs.integers(0, 2), hs.just(0)),
    hs.tuples(hs.just("restart"), hs.integers(0, 2), hs.just(0)),
    hs.tuples(hs.just("cut"), hs.integers(0, 2), hs.just(0)),
    hs.tuples(hs.just("return"), hs.integers(0, 2), hs.just(0)),
    hs.tuples(hs.just("tick"), hs.just(0), hs.just(0)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_tasks=hs.integers(1, 4),
    chain=hs.booleans(),
    mode=hs.sampled_from(["matrix", "federation"]),
    retries=hs.integers(0, 1),
    steps=hs.lists(model_step, min_size=10, max_size=80),
)
def test_model_brains_end_every_task_once_whatever_dies_and_restarts(
    n_tasks: int, chain: bool, mode: str, retries: int, steps: list[tuple[str, int, Any]]
) -> None:
    ids = ("a", "b", "c")
    tasks = [
        {"id": f"t{i}", "deps": [f"t{i - 1}"] if chain and i else [], "agent": "agent-0", "prompt": "p",
         "retries": retries, "timeout": 12}
        for i in range(n_tasks)
    ]
    the_spec = parse_dag({"dag_id": "m", "tasks": tasks})
    net = net_of(*ids)
    confirm(net, "a", the_spec, mode=mode, workers=ids if mode == "federation" else ())
    dead: set[str] = set()

    def read(node_id: str, limit: int | None = None) -> None:
        brain, n = net.brains[node_id], 0
        while net.cursors[node_id] < len(net.room) and (limit is None or n < limit):
            event = net.room[net.cursors[node_id]]
            net.cursors[node_id] += 1
            n += 1
            net.perform(node_id, brain.cluster_event(event, net.now, WALL))
        if net.cursors[node_id] == len(net.room):
            net.perform(node_id, brain.settle())  # caught up: who leads is decided now

    def restart(node_id: str) -> None:
        net.copies[node_id] = {}
        net.outboxes.pop(node_id, None)  # a process that dies loses its unsent writes
        net.add(node_id, announce=False)
        net.status(node_id, "online")
        net.catch_up(node_id)
        dead.discard(node_id)

    def offline(node_id: str) -> None:
        """Its delayed offline fires: the others declare it dead."""
        for other in ids:
            if other not in dead and other not in net.outboxes:
                net.perform(other, net.brains[other].heartbeat_event(
                    RoomEvent(f"$off{len(net.room)}", f"@{node_id}:hs", NODE_STATUS, {"status": "offline"}, node_id),
                    net.now))
                if net.cursors[other] == len(net.room):
                    net.perform(other, net.brains[other].settle())

    def back(node_id: str) -> None:
        """Reconnected: its waiting posts land, it says online again."""
        net.room.extend(net.outboxes.pop(node_id))
        net.status(node_id, "online")

    for kind, index, arg in steps:
        node_id = ids[index]
        if kind == "read" and node_id not in dead and node_id not in net.outboxes:
            read(node_id, arg)
        elif kind == "finish" and node_id not in dead and net.copies[node_id]:
            (run_id, task_id), epoch = sorted(net.copies[node_id].items())[0]
            del net.copies[node_id][(run_id, task_id)]
            net.perform(node_id, net.brains[node_id].finished(run_id, task_id, epoch, arg, f"out-{task_id}"))
        elif kind in ("kill", "cut") and node_id not in dead and node_id not in net.outboxes and len(dead) + len(net.outboxes) < 2:
            if kind == "kill":
                dead.add(node_id)
                net.copies[node_id] = {}
                net.outboxes.pop(node_id, None)
            else:
                net.outboxes[node_id] = []  # alive, its copies run on, it reads and sends nothing
            offline(node_id)
        elif kind == "restart" and node_id in dead:
            restart(node_id)
        elif kind == "return" and node_id in net.outboxes:
            back(node_id)
        elif kind == "tick":
            net.now += 5
            for other in ids:
                if other not in dead and other not in net.outboxes:
                    net.perform(other, net.brains[other].tick(net.now, WALL))
                    if net.cursors[other] == len(net.room):
                        net.perform(other, net.brains[other].settle())
    for node_id in sorted(net.outboxes):
        back(node_id)
    for node_id in sorted(dead):
        restart(node_id)
    for _ in range(60):
        for node_id in ids:
            read(node_id)
        if all("run-1" in net.brains[n].ended for n in ids):
            break  # its end, from its coordinator, read by every node
        moved = False
        for node_id in ids:
            for (run_id, task_id), epoch in sorted(net.copies[node_id].items()):
                del net.copies[node_id][(run_id, task_id)]
                net.perform(node_id, net.brains[node_id].finished(run_id, task_id, epoch, "completed", f"out-{task_id}"))
                moved = True
        if not moved:
            net.now += 5
            for node_id in ids:
                net.perform(node_id, net.brains[node_id].tick(net.now, WALL))
                net.perform(node_id, net.brains[node_id].settle())
    ledger = fold(net, the_spec)
    for task in the_spec.tasks:
        assert ledger.tasks[task.id].phase in ("completed", "ended"), (task.id, ledger.tasks[task.id])
    assert ledger.completed == sum(1 for r in ledger.tasks.values() if r.phase == "completed")
    assert all("run-1" in net.brains[n].ended for n in ids), "every node read the run's end"
