"""The run scheduler's rules (SPEC 8 "Semantics"), one test each, on the pure machine."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_actors.dag.scheduler import (
    RUN_MOVES,
    TASK_MOVES,
    Action,
    CancelAttempt,
    IllegalMove,
    RunFinished,
    RunStatus,
    RunStatusChanged,
    Scheduler,
    StartAttempt,
    TaskFacts,
    TaskStatus,
    TaskStatusChanged,
    UnknownAttempt,
    UnknownTask,
    WakeAt,
    backoff,
)
from lambda_actors.dag.spec import DagSpec, parse_dag, render_prompt


def dag(*tasks: dict[str, Any], **top: Any) -> DagSpec:
    doc: dict[str, Any] = {"dag_id": "t", "tasks": [{"agent": "a", "prompt": "p", **t} for t in tasks], **top}
    return parse_dag(doc)


def starts(actions: list[Action]) -> list[str]:
    return [a.task_id for a in actions if isinstance(a, StartAttempt)]


def statuses(actions: list[Action]) -> list[tuple[str, TaskStatus]]:
    return [(a.task_id, a.status) for a in actions if isinstance(a, TaskStatusChanged)]


def finished(actions: list[Action]) -> RunStatus | None:
    ends = [a.status for a in actions if isinstance(a, RunFinished)]
    return ends[-1] if ends else None


DIAMOND = (
    {"id": "a"},
    {"id": "b", "deps": ["a"], "prompt": "from {{ a.output }}"},
    {"id": "c", "deps": ["a"]},
    {"id": "d", "deps": ["b", "c"], "prompt": "{{ b.output }} + {{ c.output }}"},
)


def test_diamond_runs_in_dependency_order() -> None:
    s = Scheduler(dag(*DIAMOND))
    acts = s.start(0)
    assert [a for a in acts if isinstance(a, RunStatusChanged)][0].status is RunStatus.RUNNING
    assert starts(acts) == ["a"]
    assert starts(s.succeeded("a", 1, "A", 1)) == ["b", "c"]
    assert starts(s.succeeded("b", 1, "B", 2)) == []  # d still waits for c
    acts = s.succeeded("c", 1, "C", 3)
    assert starts(acts) == ["d"]
    acts = s.succeeded("d", 1, "D", 4)
    assert finished(acts) is RunStatus.COMPLETED
    assert s.status is RunStatus.COMPLETED
    assert s.progress().completed == 4


def test_upstream_output_reaches_the_prompt() -> None:
    spec = dag(*DIAMOND)
    s = Scheduler(spec)
    s.start(0)
    s.succeeded("a", 1, "the analysis", 1)
    s.succeeded("b", 1, "plan B", 2)
    s.succeeded("c", 1, "plan C", 2)
    assert render_prompt(spec.task("b"), s.outputs) == "from the analysis"
    assert render_prompt(spec.task("d"), s.outputs) == "plan B + plan C"


def test_start_attempt_carries_the_deadline_and_a_wake_up() -> None:
    s = Scheduler(dag({"id": "a", "timeout": "10m"}))
    acts = s.start(100)
    assert StartAttempt("a", 1, 700.0) in acts
    assert WakeAt(700.0) in acts


def test_retries_back_off_doubling_then_succeed() -> None:
    s = Scheduler(dag({"id": "a", "retries": 2}, {"id": "b", "deps": ["a"]}))
    s.start(0)
    acts = s.failed("a", 1, "agent error", 1)
    assert statuses(acts) == [("a", TaskStatus.PENDING)]
    assert WakeAt(1 + 5.0) in acts
    assert starts(s.tick(5.9)) == []  # not before the backoff
    assert starts(s.tick(6)) == ["a"]
    assert s.attempts("a") == 2
    acts = s.failed("a", 2, "dropped", 7)
    assert WakeAt(7 + 10.0) in acts  # doubled
    assert starts(s.tick(17)) == ["a"]
    acts = s.succeeded("a", 3, "ok", 18)
    assert ("a", TaskStatus.COMPLETED) in statuses(acts)
    assert starts(acts) == ["b"]
    assert [backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]


def test_retries_exhausted_fail_the_run_and_skip_downstream() -> None:
    s = Scheduler(
        dag(
            {"id": "a", "retries": 1},
            {"id": "b", "deps": ["a"]},
            {"id": "c", "deps": ["b"]},
            {"id": "other"},
        )
    )
    assert starts(s.start(0)) == ["a", "other"]
    s.failed("a", 1, "boom", 1)
    s.tick(6)
    acts = s.failed("a", 2, "boom again", 7)
    assert statuses(acts) == [("a", TaskStatus.FAILED), ("b", TaskStatus.SKIPPED), ("c", TaskStatus.SKIPPED)]
    assert finished(acts) is None  # another branch still runs
    acts = s.succeeded("other", 1, "fine", 8)
    assert finished(acts) is RunStatus.FAILED
    assert s.progress().failed == 1 and s.progress().completed == 1


def test_timeout_fails_and_cancels_the_attempt() -> None:
    s = Scheduler(dag({"id": "a", "timeout": "30s"}, {"id": "b", "deps": ["a"]}))
    s.start(0)
    assert s.tick(29.9) == []
    acts = s.tick(30)
    assert statuses(acts)[:2] == [("a", TaskStatus.FAILED), ("b", TaskStatus.SKIPPED)]
    assert CancelAttempt("a", 1, "timed out") in acts
    assert finished(acts) is RunStatus.FAILED
    # The executor's late answer for the abandoned attempt is ignored.
    assert s.succeeded("a", 1, "too late", 31) == []
    assert s.task_status("a") is TaskStatus.FAILED


def test_executor_reported_timeout_counts_like_a_failure() -> None:
    s = Scheduler(dag({"id": "a", "retries": 1}))
    s.start(0)
    acts = s.timed_out("a", 1, 5)
    assert statuses(acts) == [("a", TaskStatus.PENDING)]
    assert [a.reason for a in acts if isinstance(a, TaskStatusChanged)] == ["timed out; retrying"]


def test_pause_stops_new_starts_running_tasks_finish() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b", "deps": ["a"]}))
    s.start(0)
    acts = s.pause(1)
    assert RunStatusChanged(RunStatus.PAUSED, s.progress()) in acts
    acts = s.succeeded("a", 1, "A", 2)  # the running task finishes
    assert ("a", TaskStatus.COMPLETED) in statuses(acts)
    assert starts(acts) == []  # ... but b does not start
    assert s.ready() == []
    acts = s.resume(3)
    assert starts(acts) == ["b"]
    assert finished(s.succeeded("b", 1, "B", 4)) is RunStatus.COMPLETED


def test_a_paused_run_still_ends_when_its_last_task_does() -> None:
    s = Scheduler(dag({"id": "a"}))
    s.start(0)
    s.pause(1)
    assert finished(s.succeeded("a", 1, "A", 2)) is RunStatus.COMPLETED


def test_retry_during_pause_waits_for_resume() -> None:
    s = Scheduler(dag({"id": "a", "retries": 1}))
    s.start(0)
    s.pause(1)
    s.failed("a", 1, "boom", 2)
    assert starts(s.tick(100)) == []
    assert starts(s.resume(101)) == ["a"]


def test_cancel_mid_task() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b"}, {"id": "c", "deps": ["a"]}))
    s.start(0)
    s.succeeded("b", 1, "B", 1)
    acts = s.cancel(2)
    assert statuses(acts) == [("a", TaskStatus.CANCELLED), ("c", TaskStatus.CANCELLED)]
    assert CancelAttempt("a", 1, "the run was cancelled") in acts
    # The final status comes before the cancel goes out.
    kinds = [type(a) for a in acts]
    assert kinds.index(TaskStatusChanged) < kinds.index(CancelAttempt)
    assert finished(acts) is RunStatus.CANCELLED
    assert s.task_status("b") is TaskStatus.COMPLETED  # final stays final
    assert s.succeeded("a", 1, "late", 3) == []  # a late answer changes nothing
    with pytest.raises(IllegalMove):
        s.cancel(4)
    assert s.tick(10_000) == []


def test_blocked_stops_the_clock_and_unblocked_runs_on() -> None:
    s = Scheduler(dag({"id": "a", "timeout": "60s"}))
    s.start(0)
    acts = s.blocked("a", 1, "confirm: delete files", 20)
    assert statuses(acts) == [("a", TaskStatus.BLOCKED)]
    assert [a.reason for a in acts if isinstance(a, TaskStatusChanged)] == ["confirm: delete files"]
    assert WakeAt(None) in acts
    assert s.tick(500) == []  # no timeout while the owner decides
    acts = s.unblocked("a", 1, 1000)
    assert statuses(acts) == [("a", TaskStatus.RUNNING)]
    assert WakeAt(1040.0) in acts  # the 40 s it had left
    assert ("a", TaskStatus.FAILED) in statuses(s.tick(1040))


def test_blocked_then_denied_fails_the_task() -> None:
    s = Scheduler(dag({"id": "a"}))
    s.start(0)
    s.blocked("a", 1, "confirm", 1)
    acts = s.failed("a", 1, "denied by the owner", 2)
    assert statuses(acts) == [("a", TaskStatus.FAILED)]
    assert finished(acts) is RunStatus.FAILED


def test_cancelling_a_blocked_task() -> None:
    s = Scheduler(dag({"id": "a"}))
    s.start(0)
    s.blocked("a", 1, "confirm", 1)
    acts = s.cancel(2)
    assert CancelAttempt("a", 1, "the run was cancelled") in acts
    assert s.task_status("a") is TaskStatus.CANCELLED


def test_terminal_states_never_change() -> None:
    s = Scheduler(dag({"id": "a"}))
    s.start(0)
    s.succeeded("a", 1, "A", 1)
    with pytest.raises(UnknownAttempt):
        s.succeeded("a", 1, "again", 2)  # a second report of one attempt
    with pytest.raises(UnknownAttempt):
        s.failed("a", 1, "now failing", 2)
    assert s.task_status("a") is TaskStatus.COMPLETED
    for final in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED):
        assert final not in TASK_MOVES and final.final
    for final in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        assert final not in RUN_MOVES and final.final


def test_illegal_moves_are_named_errors() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b", "deps": ["a"]}))
    with pytest.raises(IllegalMove):
        s.pause(0)  # not started
    s.start(0)
    with pytest.raises(IllegalMove):
        s.start(0)
    with pytest.raises(IllegalMove):
        s.resume(0)  # not paused
    with pytest.raises(IllegalMove):
        s.unblocked("a", 1, 1)  # running, not blocked
    with pytest.raises(UnknownAttempt):
        s.succeeded("b", 1, "never started", 1)
    with pytest.raises(UnknownAttempt):
        s.succeeded("a", 2, "no such attempt", 1)
    with pytest.raises(UnknownTask):
        s.succeeded("zz", 1, "", 1)
    with pytest.raises(IllegalMove):
        s.launch("b", 1)  # not ready


def test_attempt_started_moves_the_deadline() -> None:
    s = Scheduler(dag({"id": "a", "timeout": "10s"}))
    s.start(0)
    acts = s.attempt_started("a", 1, 3)
    assert WakeAt(13.0) in acts
    assert s.tick(10) == []


def test_run_max_workers_limits_starts() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b"}, {"id": "c"}, max_workers=2))
    assert starts(s.start(0)) == ["a", "b"]
    assert starts(s.succeeded("a", 1, "", 1)) == ["c"]


def test_without_auto_launch_the_node_grants_starts() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b"}), auto_launch=False)
    assert starts(s.start(0)) == []
    demand = s.demand("run-1")
    assert [r.task_id for r in demand.ready] == ["a", "b"] and demand.holding == 0
    assert starts(s.launch("b", 1)) == ["b"]
    assert s.demand("run-1").holding == 1


def test_cancel_before_start() -> None:
    s = Scheduler(dag({"id": "a"}))
    acts = s.cancel(0)
    assert statuses(acts) == [("a", TaskStatus.CANCELLED)]
    assert finished(acts) is RunStatus.CANCELLED


def test_resume_from_facts() -> None:
    spec = dag(*DIAMOND, {"id": "e", "deps": ["d"], "retries": 1})
    facts = {
        "a": TaskFacts(TaskStatus.COMPLETED, attempts=1, output="A"),
        "b": TaskFacts(TaskStatus.RUNNING, attempts=2),  # one failure, then cut off by the restart
        "c": TaskFacts(TaskStatus.COMPLETED, attempts=1, output="C"),
    }
    s = Scheduler.restore(spec, RunStatus.RUNNING, facts)
    acts = s.start(50)
    # The cut-off attempt is written back as pending, then the new one starts.
    assert statuses(acts) == [("b", TaskStatus.PENDING), ("b", TaskStatus.RUNNING)]
    assert StartAttempt("b", 3, 50 + 1800.0) in acts  # a new attempt
    assert s.task_status("a") is TaskStatus.COMPLETED
    assert s.outputs["a"] == "A"
    assert starts(s.succeeded("b", 3, "B", 51)) == ["d"]


def test_resume_keeps_a_paused_run_paused_and_skips_below_failures() -> None:
    spec = dag({"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c"})
    facts = {"a": TaskFacts(TaskStatus.FAILED, attempts=1)}
    s = Scheduler.restore(spec, RunStatus.PAUSED, facts)
    acts = s.start(0)
    assert statuses(acts) == [("b", TaskStatus.SKIPPED)]
    assert starts(acts) == []
    assert starts(s.resume(1)) == ["c"]


def test_resume_of_a_run_that_had_ended_all_its_tasks_finishes_it() -> None:
    spec = dag({"id": "a"})
    s = Scheduler.restore(spec, RunStatus.RUNNING, {"a": TaskFacts(TaskStatus.COMPLETED, 1, output="x")})
    assert finished(s.start(0)) is RunStatus.COMPLETED


def test_resume_counts_failures_against_retries() -> None:
    spec = dag({"id": "a", "retries": 1})
    s = Scheduler.restore(spec, RunStatus.RUNNING, {"a": TaskFacts(TaskStatus.RUNNING, attempts=2)})
    s.start(0)
    # attempt 1 failed before the restart, attempt 2 was cut off: attempt 3's failure is the last.
    assert statuses(s.failed("a", 3, "boom", 1)) == [("a", TaskStatus.FAILED)]


def test_restore_refuses_an_unknown_task() -> None:
    with pytest.raises(UnknownTask):
        Scheduler.restore(dag({"id": "a"}), RunStatus.RUNNING, {"zz": TaskFacts(TaskStatus.PENDING)})


def test_progress_in_task_status() -> None:
    s = Scheduler(dag({"id": "a"}, {"id": "b"}))
    s.start(0)
    acts = s.succeeded("a", 1, "", 1)
    change = next(a for a in acts if isinstance(a, TaskStatusChanged))
    assert (change.progress.completed, change.progress.total, change.progress.failed) == (1, 2, 0)
    assert change.output == ""
