"""The pure parts of several nodes, rule by rule: wire events, the ledger, the
coordinator's side, the worker's side, who leads (SPEC 8.3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.dag.cluster import (
    Accepted,
    Assign,
    AttemptFailed,
    AttemptStarted,
    ClusterError,
    ClusterRun,
    Follow,
    Ignored,
    Lead,
    Ledger,
    NotLeading,
    Revoke,
    Succeeded,
    TakeOver,
    TaskEnded,
    leadership,
    task_ended,
)
from lambda_actors.dag.cluster_worker import Claim, PostResult, Run, Stop, Worker
from lambda_actors.dag.scheduler import CancelAttempt, StartAttempt, TaskStatus
from lambda_actors.dag.status import (
    INPUT_INLINE_LIMIT,
    RESULT_INLINE_LIMIT,
    RUN_COORDINATOR,
    TASK_ASSIGNED,
    TASK_CLAIMED,
    TASK_RESULT,
    TASK_REVOKED,
    Assigned,
    Claimed,
    Coordinator,
    Result,
    Revoked,
    TaskInput,
    parse_cluster_event,
    run_coordinator_content,
    task_assigned,
    task_claimed,
    task_result,
    task_revoked,
)

AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
R = "run-1"


def offer(task: str, epoch: int, to: str | None = None, by: str = "a", attempt: int = 1) -> Assigned:
    return Assigned(R, task, to, by, "claude", (), epoch, attempt, TaskInput(prompt="p"), None)


def done(task: str, epoch: int, by: str, outcome: str = "completed") -> Result:
    return Result(R, task, by, epoch, outcome, "out", None, None if outcome == "completed" else "boom")


# -- wire events ----------------------------------------------------------------------------


def test_assignment_carries_its_input_inline_when_small_else_a_url() -> None:
    small = task_assigned(
        R, "t1", assigned_to=None, assigned_by="a", agent_type="claude", upstream_tasks=["t0"], epoch=2, attempt=1,
        task_input=TaskInput(prompt="do", upstream_outputs={"t0": "x"}), input_url="https://a/api/input", at=AT,
    )
    assert small.content["prompt"] == "do" and small.content["upstream_outputs"] == {"t0": "x"}
    assert "input_url" not in small.content
    parsed = parse_cluster_event(small.type, small.content)
    assert parsed == Assigned(R, "t1", None, "a", "claude", ("t0",), 2, 1, TaskInput(prompt="do", upstream_outputs={"t0": "x"}), None)
    big = task_assigned(
        R, "t1", assigned_to="b", assigned_by="a", agent_type=None, upstream_tasks=["t0"], epoch=1, attempt=1,
        task_input=TaskInput(command=("echo",), upstream_outputs={"t0": "x" * INPUT_INLINE_LIMIT}),
        input_url="https://a/api/input", at=AT,
    )
    assert "upstream_outputs" not in big.content and big.content["input_url"] == "https://a/api/input"
    parsed_big = parse_cluster_event(TASK_ASSIGNED, big.content)
    assert isinstance(parsed_big, Assigned) and parsed_big.input is None and parsed_big.input_url == "https://a/api/input"


def test_a_command_task_input_round_trips() -> None:
    event = task_assigned(
        R, "t", assigned_to="b", assigned_by="a", agent_type=None, upstream_tasks=[], epoch=1, attempt=1,
        task_input=TaskInput(command=("make", "test")), input_url="u", at=AT,
    )
    parsed = parse_cluster_event(event.type, event.content)
    assert isinstance(parsed, Assigned) and parsed.input == TaskInput(command=("make", "test"))


def test_claim_result_revocation_and_coordinator_round_trip() -> None:
    claim = task_claimed(R, "t", "b", 3, at=AT)
    assert parse_cluster_event(claim.type, claim.content) == Claimed(R, "t", "b", 3)
    result = task_result(R, "t", reported_by="b", epoch=3, outcome="completed", output="ok", output_url="u", reason=None, at=AT)
    assert parse_cluster_event(result.type, result.content) == Result(R, "t", "b", 3, "completed", "ok", None, None)
    long = task_result(
        R, "t", reported_by="b", epoch=3, outcome="failed", output="x" * (RESULT_INLINE_LIMIT + 1),
        output_url="https://b/api/out", reason="exit 1", at=AT,
    )
    assert parse_cluster_event(long.type, long.content) == Result(R, "t", "b", 3, "failed", None, "https://b/api/out", "exit 1")
    revoked = task_revoked(R, "t", "a", 4, "timed out", at=AT)
    assert parse_cluster_event(revoked.type, revoked.content) == Revoked(R, "t", "a", 4, "timed out")
    assert parse_cluster_event(RUN_COORDINATOR, run_coordinator_content("b", 2)) == Coordinator("b", 2)
    with pytest.raises(ValueError, match="not a result outcome"):
        task_result(R, "t", reported_by="b", epoch=1, outcome="done", output="", output_url="u", reason=None, at=AT)


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        (TASK_CLAIMED, {"run_id": R, "task_id": "t", "claimed_by": "b", "epoch": True}),
        (TASK_CLAIMED, {"run_id": R, "task_id": "t", "claimed_by": "b", "epoch": -1}),
        (TASK_CLAIMED, {"run_id": R, "task_id": "t", "claimed_by": "", "epoch": 1}),
        (TASK_CLAIMED, {"run_id": R, "task_id": "t", "claimed_by": "b", "epoch": 1.0}),
        (TASK_RESULT, {"run_id": R, "task_id": "t", "reported_by": "b", "epoch": 1, "outcome": "ok", "output": ""}),
        (TASK_RESULT, {"run_id": R, "task_id": "t", "reported_by": "b", "epoch": 1, "outcome": "completed"}),
        (TASK_ASSIGNED, {"run_id": R, "task_id": "t", "assigned_by": "a", "epoch": 1, "attempt": 1, "upstream_tasks": []}),
        (TASK_ASSIGNED, {"run_id": R, "task_id": "t", "assigned_by": "a", "epoch": 1, "attempt": 1,
                         "upstream_tasks": [1], "prompt": "p", "upstream_outputs": {}}),
        (TASK_ASSIGNED, {"run_id": R, "task_id": "t", "assigned_by": "a", "assigned_to": 7, "epoch": 1, "attempt": 1,
                         "upstream_tasks": [], "prompt": "p", "upstream_outputs": {}}),
        (TASK_REVOKED, {"run_id": R, "task_id": "t", "epoch": 1}),
        (RUN_COORDINATOR, {"node_id": "b"}),
        (RUN_COORDINATOR, []),
        ("m.room.message", {"body": "hi"}),
    ],
)
def test_malformed_cluster_events_are_none(event_type: str, content: Any) -> None:
    assert parse_cluster_event(event_type, content) is None


json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(
    ["run_id", "task_id", "epoch", "attempt", "assigned_to", "assigned_by", "claimed_by", "reported_by", "outcome",
     "output", "output_url", "prompt", "command", "upstream_outputs", "upstream_tasks", "input_url", "node_id",
     "revoked_by", "reason", "agent_type"]
)


@settings(max_examples=200, deadline=None)
@given(
    event_type=st.sampled_from([TASK_ASSIGNED, TASK_CLAIMED, TASK_RESULT, TASK_REVOKED, RUN_COORDINATOR]),
    content=st.dictionaries(keys, json, max_size=12) | json,
)
def test_parsing_hostile_content_never_raises(event_type: str, content: Any) -> None:
    parse_cluster_event(event_type, content)
    if isinstance(content, dict):
        task_ended(content, "a")


# -- the ledger ------------------------------------------------------------------------------


def test_the_first_claim_of_the_current_epoch_wins_and_later_ones_lose() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    assert isinstance(ledger.observe(offer("t", 1)), Accepted)
    assert isinstance(ledger.observe(Claimed(R, "t", "b", 1)), Accepted)
    lost = ledger.observe(Claimed(R, "t", "c", 1))
    assert isinstance(lost, Ignored) and "claim lost: b claimed first" in lost.reason
    assert ledger.claims_lost == 1 and ledger.tasks["t"].holder == "b"
    assert isinstance(ledger.observe(Claimed(R, "t", "c", 0)), Ignored)


def test_an_assigned_task_is_claimed_by_its_assignee_only() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    ledger.observe(offer("t", 1, to="b"))
    assert isinstance(ledger.observe(Claimed(R, "t", "c", 1)), Ignored)
    assert isinstance(ledger.observe(Claimed(R, "t", "b", 1)), Accepted)


def test_only_the_coordinator_assigns_revokes_and_ends() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    assert ledger.observe(offer("t", 1, by="x")) == Ignored(offer("t", 1, by="x"), "x does not lead the run")
    assert isinstance(ledger.observe(Revoked(R, "t", "x", 2, "no")), Ignored)
    assert isinstance(ledger.observe(TaskEnded(R, "t", "cancelled", "x")), Ignored)
    assert ledger.tasks["t"].phase == "idle"


def test_a_result_of_an_older_epoch_is_stale_and_a_task_completes_once() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    ledger.observe(offer("t", 1))
    ledger.observe(Claimed(R, "t", "b", 1))
    ledger.observe(offer("t", 2))  # b was declared dead
    ledger.observe(Claimed(R, "t", "c", 2))
    assert isinstance(ledger.observe(done("t", 1, "b")), Ignored)
    assert ledger.stale_results_ignored == 1
    assert isinstance(ledger.observe(done("t", 2, "b")), Ignored)  # not the holder
    assert isinstance(ledger.observe(done("t", 2, "c")), Accepted)
    assert isinstance(ledger.observe(done("t", 2, "c")), Ignored)
    assert ledger.duplicate_results_ignored == 1 and ledger.completed == 1
    assert isinstance(ledger.observe(offer("t", 3)), Ignored)  # a completed task is not assigned again


def test_a_result_before_the_reassignment_in_the_timeline_counts() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    ledger.observe(offer("t", 1))
    ledger.observe(Claimed(R, "t", "b", 1))
    assert isinstance(ledger.observe(done("t", 1, "b")), Accepted)
    assert isinstance(ledger.observe(offer("t", 2)), Ignored)
    assert ledger.tasks["t"].phase == "completed" and ledger.stale_results_ignored == 0


def test_a_reassignment_of_an_attempt_that_already_ended_is_void() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    ledger.observe(offer("t", 1))
    ledger.observe(Claimed(R, "t", "b", 1))
    ledger.observe(done("t", 1, "b", "failed"))  # in the room before the takeover's reassignment
    assert ledger.observe(offer("t", 2, attempt=1)) == Ignored(offer("t", 2, attempt=1), "attempt 1 already ended")
    assert isinstance(ledger.observe(offer("t", 3, attempt=2)), Accepted)  # the scheduler's retry


def test_a_higher_coordinator_epoch_leads_and_the_first_write_of_an_epoch_wins() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    assert isinstance(ledger.observe(Coordinator("b", 1)), Accepted)
    assert isinstance(ledger.observe(Coordinator("c", 1)), Ignored)
    assert ledger.coordinator == "b"
    assert isinstance(ledger.observe(offer("t", 1, by="a")), Ignored)  # the old coordinator, deposed
    assert isinstance(ledger.observe(offer("t", 1, by="b")), Accepted)


def test_events_of_another_run_or_task_change_nothing() -> None:
    ledger = Ledger(R, "a", task_ids=["t"])
    assert isinstance(ledger.observe(Claimed("run-2", "t", "b", 1)), Ignored)
    assert isinstance(ledger.observe(offer("zzz", 1)), Ignored)
    learning = Ledger(R, "a")
    assert isinstance(learning.observe(offer("zzz", 1)), Accepted)


def test_facts_for_a_takeover() -> None:
    ledger = Ledger(R, "a", task_ids=["done", "said", "held", "failed", "out", "ended", "idle"])
    for task in ("done", "said", "held", "failed", "out"):
        ledger.observe(offer(task, 1))
        ledger.observe(Claimed(R, task, "b", 1))
    ledger.observe(done("done", 1, "b"))
    ledger.observe(done("said", 1, "b"))
    ledger.observe(TaskEnded(R, "said", "completed", "a"))
    ledger.observe(done("failed", 1, "b", "failed"))
    ledger.observe(TaskEnded(R, "ended", "skipped", "a"))
    facts = ledger.facts({"failed": 1})
    assert facts["said"].status is TaskStatus.COMPLETED and facts["said"].output == "out"
    # Completed but never announced: restored running, the start answers with the result.
    assert facts["done"].status is TaskStatus.RUNNING
    assert facts["held"].status is TaskStatus.RUNNING
    assert facts["failed"].status is TaskStatus.RUNNING and facts["failed"].failures == 0
    assert facts["ended"].status is TaskStatus.SKIPPED
    assert "idle" not in facts


def test_task_ended_reads_a_final_status_only() -> None:
    assert task_ended({"run_id": R, "task_id": "t", "status": "failed"}, "a") == TaskEnded(R, "t", "failed", "a")
    assert task_ended({"run_id": R, "task_id": "t", "status": "running"}, "a") is None


# -- the coordinator's side ---------------------------------------------------------------------


def coordinator(mode: str = "federation", workers: tuple[str, ...] = ("b", "c"), **kw: Any) -> ClusterRun:
    ledger = Ledger(R, "a", task_ids=[f"t{i}" for i in range(6)])
    return ClusterRun(ledger, "a", mode=mode, workers=workers, live={"a", "b", "c"}, **kw)  # type: ignore[arg-type]  # mode from the test


def echo(run: ClusterRun, actions: list[Any]) -> list[Any]:
    """The room gives our writes back, in order: what the machine then says."""
    out: list[Any] = []
    for a in actions:
        if isinstance(a, Assign):
            out += run.observe(offer(a.task_id, a.epoch, a.assigned_to, attempt=a.attempt))
        elif isinstance(a, Revoke):
            out += run.observe(Revoked(R, a.task_id, "a", a.epoch, a.reason))
    return out


def test_federation_needs_workers() -> None:
    with pytest.raises(ClusterError, match="--workers"):
        ClusterRun(Ledger(R, "a"), "a", mode="federation")


def test_federation_assigns_least_loaded_then_round_robin() -> None:
    run = coordinator()
    got = [a for i in range(3) for a in run.start_attempt(StartAttempt(f"t{i}", 1, 100.0))]
    assert got == [Assign("t0", 1, 1, "b"), Assign("t1", 1, 1, "c"), Assign("t2", 1, 1, "b")]
    # Least loaded counts what each holds: c finishing first gets the next.
    echo(run, got)
    run.observe(Claimed(R, "t1", "c", 1))
    run.observe(done("t1", 1, "c"))
    assert run.start_attempt(StartAttempt("t3", 1, 100.0)) == [Assign("t3", 1, 1, "c")]
    rr = coordinator(policy="round-robin")
    got = [a for i in range(3) for a in rr.start_attempt(StartAttempt(f"t{i}", 1, 100.0))]
    assert got == [Assign("t0", 1, 1, "b"), Assign("t1", 1, 1, "c"), Assign("t2", 1, 1, "b")]


def test_a_dead_nodes_task_is_reassigned_with_epoch_plus_one_and_its_late_result_ignored() -> None:
    run = coordinator()
    first = run.start_attempt(StartAttempt("t0", 1, 100.0))
    echo(run, first)
    assert run.observe(Claimed(R, "t0", "b", 1)) == [AttemptStarted("t0", 1)]
    again = run.node_down("b")
    assert again == [Assign("t0", 2, 1, "c")] and run.reassigned == 1
    echo(run, again)
    assert run.observe(done("t0", 1, "b")) == []
    assert run.stale_results_ignored == 1
    run.observe(Claimed(R, "t0", "c", 2))
    assert run.observe(done("t0", 2, "c")) == [Succeeded("t0", 1, "out", None)]
    assert run.observe(done("t0", 2, "c")) == []


def test_federation_parks_tasks_while_no_worker_lives() -> None:
    run = coordinator(workers=("b",))
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    assert run.node_down("b") == []
    assert run.start_attempt(StartAttempt("t1", 1, 100.0)) == []
    assert run.node_up("b") == [Assign("t0", 2, 1, "b"), Assign("t1", 1, 1, "b")]


def test_matrix_offers_and_re_offers_a_dead_holders_task() -> None:
    run = coordinator(mode="matrix", workers=())
    assert run.start_attempt(StartAttempt("t0", 1, 100.0)) == [Assign("t0", 1, 1, None)]
    echo(run, [Assign("t0", 1, 1, None)])
    run.observe(Claimed(R, "t0", "c", 1))
    assert run.node_down("b") == []
    assert run.node_down("c") == [Assign("t0", 2, 1, None)]


def test_a_late_claim_of_a_node_already_dead_is_reassigned() -> None:
    run = coordinator(mode="matrix", workers=())
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    run.node_down("z")
    assert run.observe(Claimed(R, "t0", "z", 1)) == [Assign("t0", 2, 1, None)]


def test_a_claim_of_a_node_not_seen_yet_stands() -> None:
    run = coordinator(mode="matrix", workers=())
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    assert run.observe(Claimed(R, "t0", "new", 1)) == [AttemptStarted("t0", 1)]


def test_a_timeout_counts_only_if_the_revocation_reaches_the_room_first() -> None:
    run = coordinator()
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    run.observe(Claimed(R, "t0", "b", 1))
    assert run.next_due() == 100.0
    assert run.tick(99) == []
    revoke = run.tick(100)
    assert revoke == [Revoke("t0", 2, "timed out")]
    assert echo(run, revoke) == [AttemptFailed("t0", 1, "timed out")]
    # Against a result that got there first:
    run2 = coordinator()
    echo(run2, run2.start_attempt(StartAttempt("t0", 1, 100.0)))
    run2.observe(Claimed(R, "t0", "b", 1))
    revoke2 = run2.tick(100)
    assert run2.observe(done("t0", 1, "b")) == [Succeeded("t0", 1, "out", None)]
    assert echo(run2, revoke2) == []


def test_a_failed_result_goes_to_the_scheduler_and_the_retry_takes_a_new_epoch() -> None:
    run = coordinator()
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    run.observe(Claimed(R, "t0", "b", 1))
    assert run.observe(done("t0", 1, "b", "failed")) == [AttemptFailed("t0", 1, "boom")]
    # b holds nothing now: least loaded again (ties go to the first in --workers).
    assert run.start_attempt(StartAttempt("t0", 2, 200.0)) == [Assign("t0", 2, 2, "b")]


def test_cancel_revokes_the_running_attempt() -> None:
    run = coordinator()
    echo(run, run.start_attempt(StartAttempt("t0", 1, 100.0)))
    assert run.cancel_attempt(CancelAttempt("t0", 1, "the run was cancelled")) == [Revoke("t0", 2, "the run was cancelled")]
    assert run.cancel_attempt(CancelAttempt("t0", 9, "no such attempt")) == []


def test_a_follower_does_not_assign() -> None:
    run = ClusterRun(Ledger(R, "b", task_ids=["t0"]), "a", mode="matrix")
    with pytest.raises(NotLeading, match="a does not lead run run-1 \\(b does\\)"):
        run.start_attempt(StartAttempt("t0", 1, 100.0))
    assert run.node_down("c") == [] and run.tick(1e9) == []


def test_after_a_takeover_a_live_holder_keeps_its_task_and_a_completed_one_is_answered_at_once() -> None:
    ledger = Ledger(R, "a", task_ids=["t0", "t1", "t2"])
    for task in ("t0", "t1", "t2"):
        ledger.observe(offer(task, 1))
    ledger.observe(Claimed(R, "t0", "c", 1))
    ledger.observe(Claimed(R, "t1", "d", 1))
    ledger.observe(Claimed(R, "t2", "c", 1))
    ledger.observe(done("t2", 1, "c"))
    ledger.observe(Coordinator("b", 1))
    run = ClusterRun(ledger, "b", mode="matrix", live={"b", "c"})
    run.node_down("d")
    assert run.leading
    assert run.start_attempt(StartAttempt("t0", 2, 100.0)) == [AttemptStarted("t0", 2)]
    assert run.start_attempt(StartAttempt("t1", 2, 100.0)) == [Assign("t1", 2, 2, None)]  # d is dead
    assert run.start_attempt(StartAttempt("t2", 2, 100.0)) == [Succeeded("t2", 2, "out", None)]
    assert run.observe(done("t0", 1, "c")) == [Succeeded("t0", 2, "out", None)]


# -- who leads ------------------------------------------------------------------------------------


def test_leadership() -> None:
    assert leadership("a", 0, me="a", live={"a", "b"}, dead=set()) == Lead(0)
    assert leadership("a", 0, me="b", live={"a", "b", "c"}, dead=set()) == Follow("a")
    # Not seen yet is not dead: no takeover before the observer has read the heartbeat room.
    assert leadership("a", 0, me="b", live=set(), dead=set()) == Follow("a")
    assert leadership("a", 0, me="b", live={"b", "c"}, dead={"a"}) == TakeOver(1)
    assert leadership("a", 3, me="c", live={"b", "c"}, dead={"a"}) == Follow("b")
    assert leadership("a", 0, me="c", live=set(), dead={"a", "b"}) == TakeOver(1)  # alone: it counts itself alive


# -- the worker's side ----------------------------------------------------------------------------


def worker(accept: bool = True, slots: int = 1) -> Worker:
    w = Worker("b", accept_remote_tasks=accept, slots=slots)
    w.follow(R, "a")
    return w


def test_a_worker_claims_an_offer_runs_if_it_won_and_posts_its_result() -> None:
    w = worker()
    assert w.observe(R, offer("t0", 1)) == [Claim(R, "t0", 1)]
    assert w.free == 0
    assert w.observe(R, Claimed(R, "t0", "b", 1)) == [Run(R, "t0", 1, offer("t0", 1))]
    assert w.finished(R, "t0", 1, "completed", "ok") == [PostResult(R, "t0", 1, "completed", "ok", None)]
    assert w.free == 1


def test_a_worker_that_lost_the_race_backs_off_and_takes_the_next_offer() -> None:
    w = worker()
    assert w.observe(R, offer("t0", 1)) == [Claim(R, "t0", 1)]
    assert w.observe(R, offer("t1", 1)) == []  # no slot: kept for later
    assert w.observe(R, Claimed(R, "t0", "c", 1)) == [Claim(R, "t1", 1)]
    assert w.claims_lost == 1
    assert w.observe(R, Claimed(R, "t0", "b", 1)) == []  # our own claim, too late


def test_a_worker_not_accepting_remote_tasks_claims_only_what_is_assigned_to_it() -> None:
    w = worker(accept=False)
    assert w.observe(R, offer("t0", 1)) == []
    assert w.observe(R, offer("t1", 1, to="b")) == [Claim(R, "t1", 1)]
    assert w.observe(R, offer("t2", 1, to="c")) == []


def test_a_worker_claims_only_offers_it_can_run_but_always_what_is_assigned_to_it() -> None:
    w = Worker("b", accept_remote_tasks=True, slots=2, can_run=lambda offer: offer.task_id != "t0")
    w.follow(R, "a")
    assert w.observe(R, offer("t0", 1)) == []  # not its agent: left to a node that serves it
    assert w.free == 2
    assert w.observe(R, offer("t1", 1)) == [Claim(R, "t1", 1)]
    assert w.observe(R, offer("t0", 2, to="b")) == [Claim(R, "t0", 2)]  # the coordinator chose it


def test_a_worker_stops_a_copy_superseded_by_a_newer_epoch_and_drops_its_result() -> None:
    w = worker()
    w.observe(R, offer("t0", 1))
    w.observe(R, Claimed(R, "t0", "b", 1))
    assert w.observe(R, offer("t0", 2)) == [Stop(R, "t0", 1, "superseded by epoch 2"), Claim(R, "t0", 2)]
    assert w.finished(R, "t0", 1, "completed", "late") == []
    assert w.results_dropped == 1


def test_a_worker_stops_on_revocation_final_status_and_run_end() -> None:
    w = worker(slots=3)
    for task in ("t0", "t1", "t2"):
        w.observe(R, offer(task, 1))
        w.observe(R, Claimed(R, task, "b", 1))
    assert w.observe(R, Revoked(R, "t0", "a", 2, "timed out")) == [Stop(R, "t0", 1, "revoked by the coordinator")]
    assert w.observe(R, TaskEnded(R, "t1", "cancelled", "a")) == [Stop(R, "t1", 1, "the task ended")]
    assert w.run_ended(R) == [Stop(R, "t2", 1, "the run ended")]
    assert w.running() == {} and w.stopped == 3


def test_a_restarted_worker_replays_the_room_then_runs_what_it_had_won() -> None:
    w = worker(slots=3)
    for event in (offer("t0", 1), Claimed(R, "t0", "b", 1), offer("t1", 1), offer("t2", 1, to="b"), offer("t3", 1),
                  Claimed(R, "t3", "c", 1), offer("t4", 1), Claimed(R, "t4", "b", 1), done("t4", 1, "b")):
        w.replay(R, event)
    # t0: won before the restart, its copy died with the process; t2: assigned to it;
    # t1: an open offer, the third slot; t3 is c's; t4 is done.
    assert w.caught_up(R) == [Run(R, "t0", 1, offer("t0", 1)), Claim(R, "t2", 1), Claim(R, "t1", 1)]


def test_a_claim_this_node_posted_before_it_restarted_is_run_when_it_wins() -> None:
    w = worker()
    w.replay(R, offer("t0", 1))
    assert w.caught_up(R) == [Claim(R, "t0", 1)]
    w2 = worker()
    w2.replay(R, offer("t0", 1))
    w2.caught_up(R)
    assert w2.observe(R, Claimed(R, "t0", "b", 1)) == [Run(R, "t0", 1, offer("t0", 1))]


def test_slots_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="slots"):
        Worker("b", accept_remote_tasks=True, slots=-1)
