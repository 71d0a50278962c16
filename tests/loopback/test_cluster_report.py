"""The multi-node chaos report, folded from hand-written cluster-room timelines."""

from __future__ import annotations

from typing import Any

from lambda_actors.loopback.cluster_report import HarnessEvent, TimelineEvent, cluster_report

SPEC = 'dag_id = "d"\n[[tasks]]\nid = "a"\nagent = "agent-0"\nprompt = "x"\n[[tasks]]\nid = "b"\nagent = "agent-0"\nprompt = "y"\n'
ACCOUNTS = {f"@{n}:localhost": n for n in ("node-a", "node-b", "node-c")}


class Room:
    """A cluster room's timeline, written event by event at given times (ms)."""

    def __init__(self, run_id: str = "r1") -> None:
        self.run_id = run_id
        self.events: list[TimelineEvent] = []

    def post(self, at: int, sender: str, kind: str, content: dict[str, Any], state_key: str | None = None) -> None:
        self.events.append(TimelineEvent(kind, content, f"@{sender}:localhost", at, state_key, f"$e{len(self.events)}"))

    def start(self, at: int, coordinator: str = "node-a", spec: str = SPEC) -> None:
        self.post(at, coordinator, "cis.dag.run.spec", {"run_id": self.run_id, "dag_id": "d", "spec": spec, "mode": "matrix"})
        self.coordinator(at, coordinator, 1)

    def coordinator(self, at: int, node: str, epoch: int) -> None:
        self.post(at, node, "cis.dag.run.coordinator", {"node_id": node, "epoch": epoch}, state_key=self.run_id)

    def assign(self, at: int, task: str, epoch: int, *, to: str | None = None, by: str = "node-a", attempt: int = 1) -> None:
        self.post(at, by, "cis.dag.task.assigned", {
            "run_id": self.run_id, "task_id": task, "assigned_to": to, "assigned_by": by, "agent_type": "agent-0",
            "upstream_tasks": [], "epoch": epoch, "attempt": attempt, "prompt": "x", "upstream_outputs": {},
        })

    def claim(self, at: int, task: str, epoch: int, node: str) -> None:
        self.post(at, node, "cis.dag.task.claimed", {"run_id": self.run_id, "task_id": task, "claimed_by": node, "epoch": epoch})

    def result(self, at: int, task: str, epoch: int, node: str, outcome: str = "completed") -> None:
        self.post(at, node, "cis.dag.task.result", {
            "run_id": self.run_id, "task_id": task, "reported_by": node, "epoch": epoch, "outcome": outcome,
            "output": "done", "reason": None,
        })

    def status(self, at: int, task: str, status: str = "completed", by: str = "node-a") -> None:
        self.post(at, by, "cis.dag.task.status", {"run_id": self.run_id, "task_id": task, "status": status, "attempt": 1})

    def end(self, at: int, by: str = "node-a", status: str = "completed", completed: int = 2) -> None:
        self.post(at, by, f"cis.dag.run.{status}", {"run_id": self.run_id, "progress": {"completed": completed, "total": 2, "failed": 0}})

    def task_done(self, at: int, task: str, epoch: int, node: str, by: str = "node-a") -> None:
        self.assign(at, task, epoch, by=by)
        self.claim(at + 100, task, epoch, node)
        self.result(at + 1000, task, epoch, node)
        self.status(at + 1100, task, by=by)


def kill(at: int, node: str) -> HarnessEvent:
    return HarnessEvent("kill", at, node)


def test_a_clean_run_counts_each_task_once_and_nothing_else():
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    room.task_done(3_000, "b", 1, "node-c")
    room.end(5_000)
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert (report.runs, report.runs_completed, report.tasks) == (1, 1, 2)
    assert (report.tasks_lost, report.runs_unended, report.tasks_completed_twice) == (0, 0, 0)
    assert (report.false_takeovers, report.reassignments, report.takeover_samples) == (0, 0, 0)
    assert report.attempts_per_task == {"1": 2}
    assert report.ok and all(report.goals().values())


def test_a_task_of_a_killed_node_taken_over_is_timed_from_the_kill_and_its_late_result_is_stale():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    # node-b is killed at 10 s; the coordinator offers the task again at 20 s, node-c claims it at 21.5 s.
    room.assign(20_000, "a", 2)
    room.claim(21_500, "a", 2, "node-c")
    room.result(24_000, "a", 2, "node-c")
    room.result(24_500, "a", 1, "node-b")  # the old copy's result, too late
    room.status(25_000, "a")
    room.task_done(26_000, "b", 1, "node-c")
    room.end(30_000)
    report = cluster_report(room.events, [kill(10_000, "node-b"), HarnessEvent("restart", 14_000, "node-b")], accounts=ACCOUNTS)
    assert report.takeovers_s == [11.5]
    assert report.takeover_p50_s == report.takeover_p99_s == 11.5
    assert (report.reassignments, report.false_takeovers) == (1, 0)
    assert report.stale_results_ignored == 1
    assert report.attempts_per_task == {"1": 1, "2": 1}
    assert report.node_kills == 1 and report.ok


def test_a_takeover_past_the_goal_fails_it():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.assign(20_000, "a", 2)
    room.claim(26_000, "a", 2, "node-c")
    report = cluster_report(room.events, [kill(10_000, "node-b")], accounts=ACCOUNTS)
    assert report.takeover_p99_s == 16.0
    assert report.goals()["takeover_p99_s<=15"] is False


def test_a_reassignment_away_from_a_node_nobody_killed_is_a_false_takeover():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.assign(20_000, "a", 2)  # node-b was never killed (a homeserver restart, say)
    room.claim(21_000, "a", 2, "node-c")
    report = cluster_report(room.events, [kill(-100_000, "node-b"), HarnessEvent("homeserver_down", 12_000)], accounts=ACCOUNTS)
    assert (report.reassignments, report.false_takeovers) == (1, 1)
    assert "away from node-b" in report.false_takeover_traces[0]
    assert report.homeserver_restarts == 1
    assert report.goals()["false_takeovers==0"] is False and not report.ok


def test_a_new_attempt_after_a_failure_is_no_takeover():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.result(2_000, "a", 1, "node-b", outcome="failed")
    room.assign(7_000, "a", 2, attempt=2)
    room.claim(7_100, "a", 2, "node-b")
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert (report.reassignments, report.false_takeovers) == (0, 0)
    assert report.attempts_per_task["2"] == 1


def test_tasks_without_a_final_status_and_runs_without_an_end_are_lost():
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    room.assign(3_000, "b", 1)
    room.claim(3_100, "b", 1, "node-c")
    report = cluster_report(room.events, runs={"r1": ["a", "b"], "r2": ["x"]}, accounts=ACCOUNTS)
    assert report.runs == 2 and report.runs_unended == 2 and sorted(report.unended) == ["r1", "r2"]
    assert report.tasks_lost == 2  # r1/b (claimed, never ended) and r2/x (never seen at all)
    assert any(line.startswith("r1/b (claimed") for line in report.lost)
    assert report.goals()["tasks_lost==0"] is False


def test_a_task_the_spec_names_but_nobody_ran_is_lost_and_a_skipped_one_is_not():
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert report.tasks == 2 and report.tasks_lost == 1
    room.status(5_000, "b", "skipped")
    room.end(6_000, status="failed", completed=1)
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert (report.tasks_lost, report.runs_failed, report.tasks_completed_twice) == (0, 1, 0)
    assert report.attempts_per_task == {"0": 1, "1": 1}


def test_two_completions_written_by_the_coordinator_count_the_task_twice():
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    room.status(2_500, "a")  # written again
    room.task_done(3_000, "b", 1, "node-b")
    room.end(5_000)
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert report.tasks_completed_twice == 1 and report.completed_twice == ["r1/a"]
    assert not report.ok


def test_a_run_end_counting_more_completions_than_tasks_completed_is_completing_twice():
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    room.task_done(3_000, "b", 1, "node-b")
    room.end(5_000, completed=3)
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert report.tasks_completed_twice == 1
    assert "its end says 3 tasks completed, 2 did" in report.completed_twice[0]


def test_after_the_coordinator_dies_only_the_new_one_counts():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.coordinator(15_000, "node-b", 2)  # node-a was killed at 5 s
    room.result(16_000, "a", 1, "node-b")
    room.status(16_500, "a", by="node-a")  # the old coordinator: ignored
    room.status(17_000, "a", by="node-b")
    room.task_done(18_000, "b", 1, "node-c", by="node-b")
    room.end(22_000, by="node-a")  # ignored too
    report = cluster_report(room.events, [kill(5_000, "node-a")], accounts=ACCOUNTS)
    assert report.runs_unended == 1 and report.tasks_lost == 0
    room.end(23_000, by="node-b")
    report = cluster_report(room.events, [kill(5_000, "node-a")], accounts=ACCOUNTS)
    assert (report.runs_completed, report.tasks_lost, report.tasks_completed_twice) == (1, 0, 0)
    assert (report.coordinator_takeovers, report.false_takeovers) == (1, 0)
    assert report.ok


def test_a_run_taken_over_from_a_coordinator_nobody_killed_is_a_false_takeover():
    room = Room()
    room.start(0)
    room.coordinator(15_000, "node-b", 2)
    report = cluster_report(room.events, [HarnessEvent("homeserver_down", 8_000), HarnessEvent("homeserver_up", 12_000)],
                            accounts=ACCOUNTS)
    assert (report.coordinator_takeovers, report.false_takeovers) == (1, 1)
    assert "node-b took the run over (epoch 2) from node-a" in report.false_takeover_traces[0]


def test_events_naming_another_node_than_their_sender_are_ignored():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.post(1_100, "node-b", "cis.dag.task.claimed", {"run_id": "r1", "task_id": "a", "claimed_by": "node-c", "epoch": 1})
    room.claim(1_200, "a", 1, "node-c")
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert report.forged_ignored == 1 and report.claims_lost == 0


def test_two_claims_race_for_an_offer_and_the_second_loses():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.claim(1_101, "a", 1, "node-c")
    report = cluster_report(room.events, accounts=ACCOUNTS)
    assert report.claims_lost == 1 and report.attempts_per_task["1"] == 1


def test_a_task_its_restarted_node_finishes_at_the_same_epoch_is_resumed_not_taken_over():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-b")
    room.result(9_000, "a", 1, "node-b")
    room.status(9_100, "a")
    harness = [kill(5_000, "node-b"), HarnessEvent("restart", 7_000, "node-b")]
    report = cluster_report(room.events, harness, accounts=ACCOUNTS)
    assert report.resumed_after_restart == 1 and report.takeover_samples == 0


def test_the_timeline_parser_never_raises_on_junk():
    for raw in ({}, {"type": 1}, {"type": "x", "sender": "@a:b", "origin_server_ts": "now", "content": {}},
                {"type": "x", "sender": "@a:b", "origin_server_ts": 1, "content": []}):
        assert TimelineEvent.from_raw(raw) is None
    event = TimelineEvent.from_raw({"type": "x", "sender": "@a:b", "origin_server_ts": 5, "content": {}, "state_key": "r", "event_id": "$1"})
    assert event == TimelineEvent("x", {}, "@a:b", 5, "r", "$1")
    room = Room()
    room.start(0, spec="not [ toml")
    room.post(10, "node-a", "cis.dag.task.claimed", {"run_id": 5})
    room.post(20, "node-a", "cis.dag.task.status", {"run_id": "r1"})
    assert cluster_report(room.events, accounts=ACCOUNTS).tasks == 0


def test_the_json_holds_the_issue_figures_and_goals():
    data = cluster_report([]).as_json()
    for key in ("takeover_p50_s", "takeover_p99_s", "tasks_lost", "tasks_completed_twice", "stale_results_ignored",
                "false_takeovers", "runs_completed", "node_kills", "attempts_per_task", "goals", "ok"):
        assert key in data
    assert data["ok"] is True


def test_with_runs_given_only_their_events_count():
    other = Room("r2")
    other.start(0)
    other.assign(1_000, "a", 1)
    other.claim(1_100, "a", 1, "node-b")
    other.assign(20_000, "a", 2)  # a false takeover, of a run not asked about
    other.coordinator(21_000, "node-c", 2)
    room = Room()
    room.start(0)
    room.task_done(1_000, "a", 1, "node-b")
    room.task_done(3_000, "b", 1, "node-c")
    room.end(5_000)
    timeline = sorted(room.events + other.events, key=lambda e: e.ts_ms)
    report = cluster_report(timeline, runs={"r1": ["a", "b"]}, accounts=ACCOUNTS)
    assert (report.runs, report.reassignments, report.coordinator_takeovers, report.false_takeovers) == (1, 0, 0, 0)
    everything = cluster_report(timeline, accounts=ACCOUNTS)
    assert (everything.runs, everything.reassignments, everything.false_takeovers) == (2, 1, 2)


def test_a_takeover_from_a_node_back_for_a_while_is_false_even_after_a_kill():
    room = Room()
    room.start(0)
    room.assign(1_000, "a", 1)
    room.claim(1_100, "a", 1, "node-a")
    room.coordinator(40_000, "node-b", 2)  # node-a was killed at 2 s, but back since 18 s
    harness = [kill(2_000, "node-a"), HarnessEvent("restart", 18_000, "node-a")]
    report = cluster_report(room.events, harness, accounts=ACCOUNTS)
    assert (report.coordinator_takeovers, report.false_takeovers) == (1, 1)
    just_back = [kill(2_000, "node-a"), HarnessEvent("restart", 30_000, "node-a")]
    assert cluster_report(room.events, just_back, accounts=ACCOUNTS).false_takeovers == 0
