"""The durable DAG store: specs by content, runs, attempts, outputs, the status outbox.

Every test uses a real SQLite file under tmp_path; "a restart" is closing
the store and opening the same file again.
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from lambda_actors.bot.store import Store
from lambda_actors.dag.scheduler import RunStatus, Scheduler, StartAttempt, TaskFacts, TaskStatus
from lambda_actors.dag.spec import parse_dag
from lambda_actors.dag.store import (
    SCHEMA_VERSION,
    AttemptStatus,
    DagStore,
    DagStoreError,
    IllegalMove,
    NotFound,
    TerminalState,
    open_dag_store,
)

DIAMOND = """
dag_id = "diamond"
owner = "@alice:example.org"
[[tasks]]
id = "a"
agent = "agent-0"
prompt = "start"
retries = 2
[[tasks]]
id = "b"
deps = ["a"]
agent = "agent-0"
prompt = "left of {{ a.output }}"
[[tasks]]
id = "c"
deps = ["a"]
agent = "agent-0"
prompt = "right of {{ a.output }}"
[[tasks]]
id = "d"
deps = ["b", "c"]
agent = "agent-0"
prompt = "join"
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"


@pytest.fixture
def store(path: Path):
    opened = open_dag_store(path)
    yield opened
    opened.close()


def published(store: DagStore, text: str = DIAMOND, now: float = 100.0):
    spec = parse_dag(text)
    store.publish(spec, "gateway", now)
    return spec


# -- specs ----------------------------------------------------------------------------


def test_a_spec_is_kept_under_its_content_version_and_read_back_equal(store):
    spec = published(store)
    stored = store.spec("diamond", spec.version)
    assert stored.spec == spec and stored.version == spec.version and stored.client == "gateway"
    assert store.spec("diamond").version == spec.version  # the latest


def test_the_same_content_is_one_version_and_new_content_another(store):
    spec = published(store, now=1.0)
    reordered = DIAMOND.replace('id = "a"\nagent = "agent-0"', 'agent = "agent-0"\nid = "a"')
    assert parse_dag(reordered).version == spec.version
    again = store.publish(parse_dag(reordered), "cli", 2.0)
    assert again.version == spec.version
    changed = published(store, DIAMOND.replace('prompt = "join"', 'prompt = "join them"'), now=3.0)
    assert changed.version != spec.version
    assert store.spec("diamond").version == changed.version
    store.publish(spec, "cli", 4.0)  # publishing old content again makes it the latest again
    assert store.spec("diamond").version == spec.version and store.spec("diamond").client == "cli"
    assert store.spec("diamond", changed.version).spec == changed


def test_an_unknown_spec_is_not_found(store):
    with pytest.raises(NotFound, match="no DAG 'nope'"):
        store.spec("nope")
    with pytest.raises(NotFound):
        store.create_run(parse_dag(DIAMOND), 1.0)  # never published


# -- runs -----------------------------------------------------------------------------


def test_a_new_run_has_every_task_pending_in_the_specs_order(store):
    spec = published(store)
    run = store.create_run(spec, 200.0)
    assert run.status is RunStatus.CREATED and run.owner == "@alice:example.org"
    assert store.run(run.run_id) == run
    assert [(t.task_id, t.status, t.attempts) for t in store.tasks(run.run_id)] == [
        (task_id, TaskStatus.PENDING, 0) for task_id in "abcd"
    ]
    assert store.progress(run.run_id) == {"completed": 0, "total": 4, "failed": 0}


def test_runs_are_listed_newest_first_and_by_status(store):
    spec = published(store)
    ids = [store.create_run(spec, float(t), run_id=f"run-{t}").run_id for t in range(5)]
    store.set_run_status("run-1", "running", 10.0)
    store.set_run_status("run-3", RunStatus.RUNNING, 11.0)
    assert [r.run_id for r in store.runs()] == ids[::-1]
    assert [r.run_id for r in store.runs(status="running")] == ["run-3", "run-1"]
    assert [r.run_id for r in store.runs(limit=2)] == ["run-4", "run-3"]
    assert [r.run_id for r in store.runs(limit=2, before="run-3")] == ["run-2", "run-1"]
    assert [r.run_id for r in store.unfinished_runs()] == ids


def test_run_moves_follow_the_table_and_a_final_one_never_changes(store):
    run = store.create_run(published(store), 1.0)
    started = store.set_run_status(run.run_id, "running", 2.0)
    assert started.started_at == 2.0 and started.finished_at is None
    store.set_run_status(run.run_id, "paused", 3.0)
    resumed = store.set_run_status(run.run_id, "running", 4.0)
    assert resumed.started_at == 2.0  # the first start stays
    done = store.set_run_status(run.run_id, "completed", 5.0)
    assert done.finished_at == 5.0 and store.run(run.run_id) == done
    for wanted in ("running", "cancelled", "completed"):
        with pytest.raises(TerminalState, match="terminal"):
            store.set_run_status(run.run_id, wanted, 6.0)
    assert store.run(run.run_id) == done
    other = store.create_run(published(store), 7.0)
    with pytest.raises(IllegalMove) as caught:
        store.set_run_status(other.run_id, "completed", 8.0)  # created -> completed: not in the table
    assert not isinstance(caught.value, TerminalState)
    with pytest.raises(NotFound):
        store.set_run_status("run-none", "running", 1.0)


def test_the_status_room_and_board_are_kept_with_the_run(store):
    run = store.create_run(published(store), 1.0)
    store.set_run_room(run.run_id, "!status:example.org")
    store.set_board_event(run.run_id, "$board")
    again = store.run(run.run_id)
    assert (again.room_id, again.board_event_id) == ("!status:example.org", "$board")
    with pytest.raises(NotFound):
        store.set_board_event("run-none", "$x")


# -- tasks, attempts, outputs ----------------------------------------------------------


def test_attempts_retries_and_a_completed_output_served_whole(store):
    run = store.create_run(published(store), 1.0).run_id
    assert store.start_attempt(run, "a", 2.0, session_id=f"{run}:a") == 1
    store.finish(run, "a", "pending", 3.0, reason="agent error: boom")  # retry to come
    assert store.task(run, "a").status is TaskStatus.PENDING
    assert store.start_attempt(run, "a", 8.0, session_id=f"{run}:a") == 2
    big = "x" * 200_000 + "é"
    store.finish(run, "a", "completed", 9.0, output=big, artifacts=["report.md"])
    task = store.task(run, "a")
    assert (task.status, task.attempts, task.started_at, task.finished_at) == (TaskStatus.COMPLETED, 2, 2.0, 9.0)
    attempts = store.attempts(run, "a")
    assert [(a.attempt, a.status, a.reason, a.session_id) for a in attempts] == [
        (1, AttemptStatus.FAILED, "agent error: boom", f"{run}:a"),
        (2, AttemptStatus.COMPLETED, None, f"{run}:a"),
    ]
    output = store.output(run, "a")
    assert output.text == big and output.size == 200_002 and output.attempt == 2
    assert output.artifacts == ("report.md",)
    assert store.outputs(run) == {"a": big}
    with pytest.raises(NotFound):
        store.output(run, "b")


def test_a_blocked_attempt_recovers_and_keeps_why_it_was_blocked(store):
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.block(run, "a", 3.0, "confirm: delete build/")
    assert store.task(run, "a").status is TaskStatus.BLOCKED
    assert store.attempts(run, "a")[0].status is AttemptStatus.BLOCKED
    store.recover(run, "a", 4.0)
    assert store.task(run, "a").status is TaskStatus.RUNNING
    (attempt,) = store.attempts(run, "a")
    assert (attempt.attempt, attempt.status, attempt.reason) == (1, AttemptStatus.RUNNING, "confirm: delete build/")
    with pytest.raises(IllegalMove):
        store.recover(run, "a", 5.0)  # not blocked


def test_a_terminal_task_state_never_changes(store):
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.finish(run, "a", "completed", 3.0, output="done")
    before = (store.task(run, "a"), store.attempts(run, "a"), store.output(run, "a"))
    moves = [
        lambda: store.finish(run, "a", "completed", 4.0, output="again"),  # the same ending twice
        lambda: store.finish(run, "a", "failed", 4.0, reason="late"),
        lambda: store.finish(run, "a", "cancelled", 4.0),
        lambda: store.finish(run, "a", "pending", 4.0),
        lambda: store.start_attempt(run, "a", 4.0),
        lambda: store.block(run, "a", 4.0, "late confirm"),
    ]
    for move in moves:
        with pytest.raises(TerminalState) as caught:
            move()
        assert f"task {run}/a" in str(caught.value) and "completed" in str(caught.value)
    assert (store.task(run, "a"), store.attempts(run, "a"), store.output(run, "a")) == before
    # Skipped and cancelled are terminal too.
    store.finish(run, "b", "skipped", 5.0, reason="upstream a failed")
    store.finish(run, "c", "cancelled", 5.0)
    for task_id in "bc":
        with pytest.raises(TerminalState):
            store.start_attempt(run, task_id, 6.0)


def test_moves_the_table_lacks_are_named_errors(store):
    run = store.create_run(published(store), 1.0).run_id
    with pytest.raises(IllegalMove, match="from pending to completed"):
        store.finish(run, "a", "completed", 2.0, output="never started")
    with pytest.raises(IllegalMove):
        store.block(run, "a", 2.0, "not running")
    with pytest.raises(ValueError):
        store.finish(run, "a", "running", 2.0)
    with pytest.raises(ValueError):
        store.finish(run, "a", "failed", 2.0, output="only completed tasks have one")
    with pytest.raises(NotFound):
        store.start_attempt(run, "zz", 2.0)
    assert store.task(run, "a").status is TaskStatus.PENDING and store.attempts(run) == []


def test_cancelling_a_running_task_closes_its_attempt(store):
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.finish(run, "a", "cancelled", 3.0, reason="run cancelled")
    (attempt,) = store.attempts(run, "a")
    assert (attempt.status, attempt.finished_at) == (AttemptStatus.CANCELLED, 3.0)
    task = store.task(run, "a")
    assert (task.status, task.reason, task.finished_at) == (TaskStatus.CANCELLED, "run cancelled", 3.0)


def test_a_restart_resumes_from_the_facts_and_a_running_task_gets_a_new_attempt(path):
    store = open_dag_store(path)
    run = store.create_run(published(store), 1.0).run_id
    store.set_run_status(run, "running", 1.0)
    store.start_attempt(run, "a", 2.0, session_id=f"{run}:a")
    store.finish(run, "a", "completed", 3.0, output="A")
    store.start_attempt(run, "b", 4.0)
    store.start_attempt(run, "c", 4.0)
    store.block(run, "c", 5.0, "confirm")
    store.close()  # the node is killed here

    store = open_dag_store(path)
    assert [r.run_id for r in store.unfinished_runs()] == [run]
    facts = store.resume_facts(run)
    assert facts == {
        "a": TaskFacts(TaskStatus.COMPLETED, 1, 0, "A"),
        "b": TaskFacts(TaskStatus.RUNNING, 1, 0, None),
        "c": TaskFacts(TaskStatus.BLOCKED, 1, 0, None),
        "d": TaskFacts(TaskStatus.PENDING, 0, 0, None),
    }
    # The scheduler rebuilt from them starts new attempts of b and c, not a.
    stored = store.run(run)
    machine = Scheduler.restore(store.spec(stored.dag_id, stored.version).spec, stored.status, facts)
    starts = [a for a in machine.start(10.0) if isinstance(a, StartAttempt)]
    assert sorted((a.task_id, a.attempt) for a in starts) == [("b", 2), ("c", 2)]
    assert store.outputs(run) == {"a": "A"}
    assert store.start_attempt(run, "b", 10.0) == 2
    assert store.start_attempt(run, "c", 10.0) == 2
    for task_id in "bc":
        first, second = store.attempts(run, task_id)
        assert (first.status, first.finished_at) == (AttemptStatus.INTERRUPTED, 10.0)
        assert second.status is AttemptStatus.RUNNING
    with pytest.raises(TerminalState):
        store.start_attempt(run, "a", 10.0)  # completed stays completed
    store.close()


def test_an_interrupted_transition_leaves_nothing_half_written(store):
    """A write that fails part-way (here: a float in its status event) keeps
    nothing of itself: the task's status, its attempt and its output go
    together or not at all."""
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    with pytest.raises(ValueError, match="float"):
        store.finish(
            run, "a", "completed", 3.0, output="A",
            events=[("cis.dag.task.status", {"run_id": run, "status": "completed"}), ("x", {"elapsed": 1.5})],
        )
    assert store.task(run, "a").status is TaskStatus.RUNNING
    assert store.attempts(run, "a")[0].status is AttemptStatus.RUNNING
    assert store.status_backlog() == 0
    with pytest.raises(NotFound):
        store.output(run, "a")


# -- the status outbox ------------------------------------------------------------------


def test_status_events_are_queued_with_their_transition_and_marked_sent(path):
    store = open_dag_store(path)
    run = store.create_run(published(store), 1.0, events=[("cis.dag.run.created", {"run_id": "r", "max_workers": 4})])
    attempt = store.start_attempt(
        run.run_id, "a", 2.0, events=[("cis.dag.task.status", {"task_id": "a", "status": "running"})]
    )
    assert attempt == 1
    store.append_status_events(run.run_id, [("cis.dag.run.started", {"progress": {"completed": 0}})], 3.0)
    events = store.unsent_status_events()
    assert [e.type for e in events] == ["cis.dag.run.created", "cis.dag.task.status", "cis.dag.run.started"]
    assert events[1].content == {"task_id": "a", "status": "running"} and events[1].run_id == run.run_id
    assert [e.seq for e in store.unsent_status_events(after=events[0].seq)] == [e.seq for e in events[1:]]
    store.mark_status_sent([events[0].seq, events[1].seq])
    store.close()

    store = open_dag_store(path)  # what Matrix did not get survives a restart
    assert [e.type for e in store.unsent_status_events()] == ["cis.dag.run.started"]
    assert store.status_backlog() == 1
    assert store.forget_sent_status_events(before=10.0) == 2
    assert store.status_backlog() == 1
    store.close()


def test_task_counts_cover_unfinished_runs(store):
    spec = published(store)
    live = store.create_run(spec, 1.0).run_id
    done = store.create_run(spec, 1.0).run_id
    store.start_attempt(live, "a", 2.0)
    store.set_run_status(done, "cancelled", 2.0)
    assert store.task_counts() == {TaskStatus.RUNNING: 1, TaskStatus.PENDING: 3}


# -- the file ---------------------------------------------------------------------------


def test_the_file_is_private_and_the_schema_versioned_apart_from_the_bots(path):
    store = open_dag_store(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    bot = Store.open(path)  # the bot's migrations run over a file holding DAG tables
    assert bot.schema_version() >= 1
    bot.close()
    assert open_dag_store(path).schema_version() == SCHEMA_VERSION


def test_a_database_from_a_newer_release_is_refused_saying_so(path):
    open_dag_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE dag_schema SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(DagStoreError, match="newer release"):
        open_dag_store(path)


def test_a_file_that_is_not_a_database_is_refused_in_one_line(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DagStoreError, match="not a usable SQLite database") as caught:
        open_dag_store(path)
    assert "\n" not in str(caught.value)


def test_the_bots_store_and_the_dag_store_share_the_file_without_locking(path):
    """WAL: a reader on one connection never blocks a writer on the other,
    and each connection's short write transactions interleave."""
    bot = Store.open(path)
    dag = open_dag_store(path)
    run = dag.create_run(published(dag), 1.0).run_id
    # The bot holds a read transaction open (a long read) ...
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM dag_tasks").fetchone()[0] == 4
    # ... while both stores write, alternately.
    for index, task_id in enumerate("abcd"):
        dag.start_attempt(run, task_id, 2.0 + index)
        bot.ingest([(f"$e{index}", "!room:x", {"type": "m.room.message", "event_id": f"$e{index}"}, False)], f"s{index}")
        dag.finish(run, task_id, "completed", 3.0 + index, output=task_id.upper())
    assert reader.execute("SELECT COUNT(*) FROM dag_outputs").fetchone()[0] == 0  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT COUNT(*) FROM dag_outputs").fetchone()[0] == 4
    assert bot.sync_token() == "s3"
    assert dag.outputs(run) == {"a": "A", "b": "B", "c": "C", "d": "D"}
    reader.close()
    bot.close()
    dag.close()


def test_after_a_restart_failed_attempts_count_against_retries_and_an_interrupted_one_does_not(path):
    store = open_dag_store(path)
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.finish(run, "a", "pending", 3.0, reason="ERROR from the agent")
    store.start_attempt(run, "a", 8.0)
    store.close()
    store = open_dag_store(path)
    assert store.resume_facts(run)["a"] == TaskFacts(TaskStatus.RUNNING, 2, 1, None)
    store.start_attempt(run, "a", 20.0)
    store.close()
    store = open_dag_store(path)
    assert store.resume_facts(run)["a"] == TaskFacts(TaskStatus.RUNNING, 3, 1, None)
    assert [a.status for a in store.attempts(run, "a")] == [
        AttemptStatus.FAILED, AttemptStatus.INTERRUPTED, AttemptStatus.RUNNING,
    ]
    store.close()


# -- batches ----------------------------------------------------------------------------


def test_a_batch_commits_its_writes_together(path):
    store = open_dag_store(path)
    run = store.create_run(published(store), 1.0).run_id
    other = sqlite3.connect(path)
    with store.batch():
        store.set_run_status(run, "running", 2.0)
        for task_id in "bc":
            store.finish(run, task_id, "skipped", 2.0, events=[("cis.dag.task.status", {"task_id": task_id})])
        # Not visible to another connection until the batch ends.
        assert other.execute("SELECT COUNT(*) FROM dag_tasks WHERE status = 'skipped'").fetchone()[0] == 0
    assert other.execute("SELECT COUNT(*) FROM dag_tasks WHERE status = 'skipped'").fetchone()[0] == 2
    assert store.status_backlog() == 2
    other.close()
    store.close()


def test_a_write_refused_inside_a_batch_is_undone_alone_and_an_escaping_error_undoes_the_batch(store):
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.finish(run, "a", "completed", 3.0, output="A")
    with store.batch():
        store.finish(run, "b", "skipped", 4.0)
        with pytest.raises(TerminalState):
            store.finish(run, "a", "failed", 4.0)  # refused: the rest of the batch stands
        with pytest.raises(ValueError):
            store.finish(run, "c", "cancelled", 4.0, events=[("x", {"ratio": 0.5})])  # undone whole
    assert store.task(run, "b").status is TaskStatus.SKIPPED
    assert store.task(run, "a").status is TaskStatus.COMPLETED
    assert store.task(run, "c").status is TaskStatus.PENDING
    with pytest.raises(RuntimeError):
        with store.batch():
            store.finish(run, "c", "cancelled", 5.0)
            store.finish(run, "d", "cancelled", 5.0)
            raise RuntimeError("the actor crashed mid-step")
    assert [store.task(run, t).status for t in "cd"] == [TaskStatus.PENDING, TaskStatus.PENDING]
    store.finish(run, "c", "cancelled", 6.0)  # the store is usable after
    assert store.task(run, "c").status is TaskStatus.CANCELLED


def test_a_path_that_is_a_folder_is_refused_in_one_line(tmp_path):
    with pytest.raises(DagStoreError, match="cannot be opened") as caught:
        open_dag_store(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_stored_spec_that_no_longer_reads_says_to_publish_again(store, path):
    spec = published(store)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE dag_specs SET spec = ?", ('{"dag_id": "diamond", "tasks": []}',))
    db.close()
    with pytest.raises(DagStoreError, match="publish the DAG again"):
        store.spec("diamond", spec.version)


# -- checkpoints ------------------------------------------------------------------------


def test_a_checkpoint_on_another_thread_puts_what_the_wal_held_in_the_file_itself(path, tmp_path):
    store = open_dag_store(path)
    run = store.create_run(published(store), 1.0).run_id
    store.start_attempt(run, "a", 2.0)
    store.finish(run, "a", "completed", 3.0, output="A")
    # The commits are in the WAL, not yet in the file (the store's own
    # connection checkpoints only past a large limit).
    assert not _in_file_alone(path, tmp_path / "before.sqlite3", run)
    worker = threading.Thread(target=store.checkpoint)  # as the node calls it: off the store's thread
    worker.start()
    worker.join()
    assert _in_file_alone(path, tmp_path / "after.sqlite3", run)
    store.close()


def _in_file_alone(path: Path, copy: Path, run: str) -> bool:
    """Whether the database file without its WAL holds the run's output."""
    copy.write_bytes(path.read_bytes())
    db = sqlite3.connect(copy)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "dag_outputs" not in tables:
            return False
        return db.execute("SELECT COUNT(*) FROM dag_outputs WHERE run_id = ?", (run,)).fetchone()[0] == 1
    finally:
        db.close()


def test_an_in_memory_store_has_nothing_to_checkpoint():
    store = open_dag_store(":memory:")
    assert store.checkpoint() is False
    store.close()


def test_on_commit_is_called_once_per_commit_and_never_for_a_rollback(store):
    spec = published(store)
    commits: list[int] = []
    store.on_commit = lambda: commits.append(1)
    run = store.create_run(spec, 1.0).run_id
    assert len(commits) == 1
    with store.batch():
        store.start_attempt(run, "a", 2.0)
        store.finish(run, "a", "completed", 3.0, output="A")
    assert len(commits) == 2
    with pytest.raises(RuntimeError):
        with store.batch():
            store.finish(run, "b", "cancelled", 4.0)
            raise RuntimeError("the actor crashed mid-step")
    assert len(commits) == 2


def test_an_all_or_nothing_batch_is_kept_whole_or_not_at_all(store):
    run = store.create_run(published(store), 1.0).run_id
    with store.batch(all_or_nothing=True):
        store.start_attempt(run, "a", 2.0)
        store.finish(run, "a", "completed", 3.0, output="A")
    assert store.task(run, "a").status is TaskStatus.COMPLETED
    with pytest.raises(TerminalState):
        with store.batch(all_or_nothing=True):
            store.finish(run, "b", "skipped", 4.0)
            store.finish(run, "a", "failed", 4.0)  # refused: the error escapes, nothing of the batch stays
    assert store.task(run, "b").status is TaskStatus.PENDING
    # An ordinary batch after it still undoes a refused write alone.
    with store.batch():
        store.finish(run, "b", "skipped", 5.0)
        with pytest.raises(TerminalState):
            store.finish(run, "a", "failed", 5.0)
    assert store.task(run, "b").status is TaskStatus.SKIPPED
