"""The run's m.notice board: its rendering and the throttle of its edits."""

from __future__ import annotations

from lambda_actors.dag.board import DAG_KEY, BoardThrottle, EditBoard, PostBoard, TaskRow, render
from lambda_actors.dag.status import Progress, canonical_size
from lambda_actors.matrix import content as contents

T0 = 1_764_000_000.0


def board(tasks, *, status="running", now=T0 + 100, progress=Progress(1, 3)):
    return render("run-1", "refactor", status, tasks, progress, now)


def test_the_board_is_a_notice_with_an_html_table_a_text_body_progress_and_the_run_id() -> None:
    content = board(
        [
            TaskRow("analyze", "completed", 1, T0, T0 + 125),
            TaskRow("plan", "running", 2, T0 + 10),
            TaskRow("test", "pending"),
        ]
    )
    assert content["msgtype"] == "m.notice" and content["format"] == "org.matrix.custom.html"
    assert content[DAG_KEY] == {"run_id": "run-1"}
    html = content["formatted_body"]
    assert "<table>" in html and "<th>task</th><th>status</th><th>attempt</th><th>elapsed</th>" in html
    assert "<tr><td>analyze</td><td>✅ completed</td><td>1</td><td>2m05s</td></tr>" in html
    assert "<tr><td>plan</td><td>▶️ running</td><td>2</td><td>1m</td></tr>" in html
    assert "1/3 completed" in html
    body = content["body"]
    assert body.splitlines()[0] == "DAG refactor · run run-1 · running"
    assert "✅ analyze  completed  attempt 1  2m05s" in body and "1/3 completed" in body


def test_task_ids_are_escaped_in_html() -> None:
    html = board([TaskRow("<script>", "pending")])["formatted_body"]
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_running_task_changes_the_board_once_a_minute_not_every_second() -> None:
    tasks = [TaskRow("plan", "running", 1, T0)]
    assert board(tasks, now=T0 + 1) == board(tasks, now=T0 + 59)
    assert board(tasks, now=T0 + 59) != board(tasks, now=T0 + 61)


def test_a_run_too_big_for_one_event_shows_busy_and_failed_tasks_and_counts_the_rest() -> None:
    tasks = [TaskRow(f"task-{i:04d}", "completed", 1, T0, T0 + 1) for i in range(1_000)]
    tasks[500] = TaskRow("the-busy-one", "running", 1, T0)
    tasks[900] = TaskRow("the-failed-one", "failed", 3, T0, T0 + 9)
    content = board(tasks, progress=Progress(998, 1_000, 1))
    assert "the-busy-one" in content["formatted_body"] and "the-failed-one" in content["body"]
    assert "more tasks (" in content["body"] and "completed)" in content["body"]
    # Even as an edit (the body twice, the HTML once) it fits in an event.
    assert canonical_size(contents.edit("$board", content)) < 60_000


def test_the_first_rendering_is_posted_at_once_then_edits_come_at_most_every_2_s_and_only_on_change() -> None:
    throttle = BoardThrottle(min_interval=2.0)
    one = board([TaskRow("a", "pending")])
    two = board([TaskRow("a", "running", 1, T0)])
    three = board([TaskRow("a", "blocked", 1, T0)])
    assert throttle.show(one, 0.0) == [PostBoard(one)]
    assert throttle.show(two, 0.5) == []  # the post is still in flight
    assert throttle.sent(0.6) == []  # too soon for an edit
    assert throttle.next_due() == 2.0
    assert throttle.show(three, 1.0) == []
    [edit] = throttle.tick(2.0)
    assert edit == EditBoard(three, 1)  # the newest content; "two" was never shown
    throttle.sent(2.1)
    assert throttle.show(board([TaskRow("a", "blocked", 1, T0)]), 10.0) == []  # equal: no edit
    assert throttle.next_due() is None


def test_the_final_state_is_always_shown_after_the_throttle() -> None:
    throttle = BoardThrottle(min_interval=2.0)
    throttle.show(board([TaskRow("a", "running", 1, T0)]), 0.0)
    throttle.sent(0.1)
    final = board([TaskRow("a", "completed", 1, T0, T0 + 1)], status="completed")
    assert throttle.final(final, 0.5) == []
    assert not throttle.finished
    assert throttle.show(board([TaskRow("a", "running", 1, T0)]), 1.0) == []  # after the final: ignored
    assert throttle.tick(2.0) == [EditBoard(final, 1)]
    throttle.sent(2.1)
    assert throttle.finished


def test_a_failed_post_is_retried_with_its_first_content_then_edited_to_the_newest() -> None:
    throttle = BoardThrottle(min_interval=2.0, retry_s=3.0)
    one = board([TaskRow("a", "pending")])
    two = board([TaskRow("a", "running", 1, T0)])
    [post] = throttle.show(one, 0.0)
    assert throttle.failed(0.1) == []
    throttle.show(two, 0.2)
    assert throttle.next_due() == 3.1
    assert throttle.tick(3.1) == [post]
    assert throttle.sent(3.2) == []
    assert throttle.tick(5.1) == [EditBoard(two, 1)]


def test_a_failed_edit_is_retried_with_the_newest_content() -> None:
    throttle = BoardThrottle(min_interval=2.0, retry_s=5.0)
    throttle.show(board([TaskRow("a", "pending")]), 0.0)
    throttle.sent(0.0)
    two = board([TaskRow("a", "running", 1, T0)])
    three = board([TaskRow("a", "completed", 1, T0, T0 + 3)], status="completed")
    [edit] = throttle.show(two, 2.0)
    throttle.failed(2.1)
    throttle.final(three, 3.0)
    assert throttle.next_due() == 7.1
    assert throttle.tick(7.1) == [EditBoard(three, 2)]

