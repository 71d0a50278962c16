"""The status events of SPEC 8.1 and the pure batcher that sends them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from lambda_actors.dag import status as s
from lambda_actors.dag.status import Batcher, LogicalEvent, Progress, SendEvent

AT = datetime(2026, 12, 2, 10, 30, 1, 250_000, tzinfo=UTC)
P = Progress(1, 6, 0)


def task(task_id: str, state: str, *, run: str = "run-1", attempt: int = 1) -> LogicalEvent:
    return s.task_status(
        run, task_id, state, agent_type="agent-0", session_id=f"{run}:{task_id}", attempt=attempt, progress=P, at=AT
    )


def unpacked(send: SendEvent) -> list[tuple[str, dict]]:
    return [(t, dict(c)) for t, c in s.unpack(send.event_type, send.content)]


# -- contents -------------------------------------------------------------------------


def test_every_content_has_the_fields_of_8_1_and_an_rfc3339_utc_timestamp() -> None:
    events = {
        s.RUN_CREATED: s.run_created("run-1", "refactor", "dags/refactor.toml", 4, False, at=AT),
        s.RUN_STARTED: s.run_event(s.RUN_STARTED, "run-1", "refactor", P, at=AT),
        s.TASK_STATUS: task("analyze", "running"),
        s.TASK_OUTPUT: s.task_output("run-1", "analyze", "short", at=AT),
        s.SESSION_BLOCKED: s.session_blocked("run-1", "plan", "run-1:plan", "wants to delete", "preview", at=AT),
        s.SESSION_RECOVERED: s.session_recovered("run-1", "plan", "run-1:plan", at=AT),
    }
    fields = {
        s.RUN_CREATED: {"run_id", "dag_name", "source_file", "max_workers", "federate"},
        s.RUN_STARTED: {"run_id", "dag_name", "progress"},
        s.TASK_STATUS: {"run_id", "task_id", "status", "agent_type", "session_id", "attempt", "progress"},
        s.TASK_OUTPUT: {"run_id", "task_id", "output"},
        s.SESSION_BLOCKED: {"run_id", "task_id", "session_id", "reason", "output_preview"},
        s.SESSION_RECOVERED: {"run_id", "task_id", "session_id"},
    }
    for event_type, event in events.items():
        assert event.type == event_type
        assert set(event.content) == fields[event_type] | {"timestamp"}
        assert event.content["timestamp"] == "2026-12-02T10:30:01.250Z"
    assert events[s.TASK_STATUS].content["progress"] == {"completed": 1, "total": 6, "failed": 0}


def test_a_timestamp_in_another_zone_is_written_in_utc_and_a_naive_one_is_refused() -> None:
    plus2 = AT.astimezone(timezone(timedelta(hours=2)))
    assert s.rfc3339(plus2) == "2026-12-02T10:30:01.250Z"
    with pytest.raises(ValueError, match="aware"):
        s.rfc3339(datetime(2026, 1, 1))


def test_no_float_can_get_into_an_event() -> None:
    with pytest.raises(TypeError, match=r"run\.created\.max_workers: 4\.0 is a float"):
        s.run_created("run-1", "d", "f.toml", 4.0, False, at=AT)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(TypeError, match=r"progress\.completed"):
        s.run_event(s.RUN_PAUSED, "run-1", "d", Progress(0.5, 2), at=AT)  # type: ignore[arg-type]  # idem
    with pytest.raises(TypeError, match="float"):
        s.check_integers({"a": [1, {"b": float("nan")}]})
    s.check_integers({"a": [1, True, None, "x", {"b": 2}]})


def test_an_output_over_10_kb_is_sent_as_summary_size_truncated_and_one_under_whole() -> None:
    small = "é" * (s.OUTPUT_LIMIT // 2)  # exactly the limit in UTF-8
    assert s.task_output("r", "t", small, at=AT).content["output"] == small
    big = "head " + "x" * 50_000 + " tail"
    content = s.task_output("r", "t", big, at=AT).content
    assert "output" not in content
    assert content["truncated"] is True
    assert content["size"] == len(big.encode())
    assert content["summary"].startswith("head ") and content["summary"].endswith(" tail")
    assert s.canonical_size(dict(content)) < s.OUTPUT_LIMIT


def test_unknown_types_and_task_statuses_are_refused_when_built() -> None:
    with pytest.raises(ValueError, match="not a run event"):
        s.run_event("cis.dag.run.exploded", "r", "d", P, at=AT)
    with pytest.raises(ValueError, match="not a task status"):
        task("a", "thinking")


def test_unpack_takes_a_batch_apart_and_never_raises_on_junk() -> None:
    one = task("a", "running")
    assert s.unpack(one.type, one.content) == [(one.type, one.content)]
    batch = {"events": [one.to_json(), {"type": "m.room.message", "content": {}}, 3, {"type": s.TASK_STATUS}]}
    assert s.unpack(s.BATCH, batch) == [(one.type, one.to_json()["content"])]
    assert s.unpack(s.BATCH, {"events": "nope"}) == []
    assert s.unpack("m.room.message", {"body": "hi"}) == []


# -- the batcher ----------------------------------------------------------------------


def test_one_event_in_a_window_goes_alone_as_its_own_type_when_the_window_ends() -> None:
    b = Batcher("node-a.1", batch_interval_ms=500)
    assert b.put(task("a", "running"), 10.0) == []
    assert b.next_due() == 10.5
    assert b.tick(10.4) == []
    [send] = b.tick(10.5)
    assert send.event_type == s.TASK_STATUS and send.content["task_id"] == "a"
    assert send.txn_id == "node-a.1.1"
    assert b.sent(send.txn_id, 10.6) == []
    assert b.idle and b.delivered == 1


def test_several_events_in_a_window_go_as_one_batch_in_order() -> None:
    b = Batcher("n", batch_interval_ms=500)
    b.put(s.run_event(s.RUN_STARTED, "run-1", "d", P, at=AT), 0.0)
    b.put(task("a", "running"), 0.1)
    b.put(task("b", "running"), 0.2)
    [send] = b.tick(0.5)
    assert send.event_type == s.BATCH
    assert [(t, c.get("task_id")) for t, c in unpacked(send)] == [
        (s.RUN_STARTED, None),
        (s.TASK_STATUS, "a"),
        (s.TASK_STATUS, "b"),
    ]
    # An event after the window opens the next one.
    b.sent(send.txn_id, 0.55)
    assert b.put(task("a", "completed"), 0.6) == []
    assert b.next_due() == pytest.approx(1.1)


def test_an_intermediate_status_replaces_a_waiting_one_but_final_and_run_events_stay_in_order() -> None:
    b = Batcher("n", batch_interval_ms=500)
    b.put(task("a", "pending"), 0.0)
    b.put(task("a", "running"), 0.1)
    b.put(s.run_event(s.RUN_PAUSED, "run-1", "d", P, at=AT), 0.2)
    b.put(task("a", "blocked"), 0.3)
    b.put(task("a", "completed"), 0.35)
    b.put(s.run_event(s.RUN_COMPLETED, "run-1", "d", P, at=AT), 0.4)
    [send] = b.tick(0.5)
    assert [(t, c.get("status")) for t, c in unpacked(send)] == [
        (s.RUN_PAUSED, None),
        (s.TASK_STATUS, "completed"),
        (s.RUN_COMPLETED, None),
    ]
    assert b.coalesced == 3


def test_a_status_sent_or_in_flight_is_never_replaced() -> None:
    b = Batcher("n", batch_interval_ms=500)
    b.put(task("a", "running"), 0.0)
    [first] = b.tick(0.5)
    b.put(task("a", "blocked"), 0.6)  # while the first is in flight
    b.sent(first.txn_id, 0.7)
    [second] = b.tick(1.1)
    assert first.content["status"] == "running" and second.content["status"] == "blocked"


def test_batches_are_split_to_stay_under_the_event_limit_and_the_rest_goes_at_once() -> None:
    b = Batcher("n", batch_interval_ms=500)
    events = [s.task_output("run-1", f"t{i}", "x" * 9_000, at=AT) for i in range(20)]
    for i, event in enumerate(events):
        b.put(event, i * 0.01)
    sends: list[SendEvent] = []
    now = 0.5
    actions = b.tick(now)
    while actions:
        [send] = actions
        sends.append(send)
        assert s.canonical_size(dict(send.content)) <= s.MAX_CONTENT_BYTES
        now += 0.01
        actions = b.sent(send.txn_id, now)
    assert len(sends) > 1
    assert [e.content["task_id"] for send in sends for e in send.events] == [f"t{i}" for i in range(20)]
    assert len({send.txn_id for send in sends}) == len(sends)


def test_a_failed_send_is_retried_unchanged_with_backoff_while_new_events_wait_behind_it() -> None:
    b = Batcher("n", batch_interval_ms=500, retry_initial_s=1.0, retry_max_s=4.0)
    b.put(task("a", "running"), 0.0)
    [send] = b.tick(0.5)
    assert b.failed(send.txn_id, 0.6) == []
    b.put(task("b", "completed"), 0.7)
    assert b.next_due() == pytest.approx(1.6)
    [again] = b.tick(1.6)
    assert again == send  # same transaction id and content: a repeat cannot post twice
    b.failed(again.txn_id, 1.7)
    assert b.next_due() == pytest.approx(3.7)
    [again] = b.tick(3.7)
    b.failed(again.txn_id, 3.8, retry_after_s=10.0)  # the homeserver asked for more
    assert b.next_due() == pytest.approx(13.8)
    assert b.backlog == 2
    [again] = b.tick(13.8)
    assert again == send
    [after] = b.sent(again.txn_id, 13.9)  # the window of "b" is long over: at once
    assert after.content["task_id"] == "b"


def test_a_long_outage_keeps_every_final_status_and_memory_bounded_by_the_tasks() -> None:
    b = Batcher("n", batch_interval_ms=500, retry_max_s=30.0)
    b.put(s.run_created("run-1", "d", "f.toml", 4, False, at=AT), 0.0)
    [send] = b.tick(0.5)
    b.failed(send.txn_id, 0.5, retry_after_s=1_000.0)
    now = 1.0
    # Matrix stays down while 200 tasks move through every status, many times.
    for round_no in range(20):
        for i in range(200):
            b.put(task(f"t{i}", "running", attempt=round_no + 1), now)
            now += 0.001
    for i in range(200):
        b.put(task(f"t{i}", "completed", attempt=20), now)
    # Waiting: one event in flight, and per task one final status (its
    # intermediate ones were replaced).
    assert b.backlog == 1 + 200
    assert len(b._queue) <= 2 * 200 + 64
    delivered: list[LogicalEvent] = []
    actions = b.tick(now + 2_000)
    while actions:
        [send] = actions
        delivered.extend(send.events)
        actions = b.sent(send.txn_id, now + 2_000)
    assert delivered[0].type == s.RUN_CREATED
    finals = [(e.content["task_id"], e.content["status"]) for e in delivered[1:]]
    assert finals == [(f"t{i}", "completed") for i in range(200)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "tick", "ok", "fail"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["pending", "running", "blocked", "completed", "run"]),
            st.floats(0, 2),
        ),
        max_size=60,
    )
)
def test_whatever_happens_final_statuses_and_run_events_arrive_once_in_order(steps) -> None:
    b = Batcher("n", batch_interval_ms=500, retry_initial_s=0.5, retry_max_s=2.0)
    now = 0.0
    produced: list[LogicalEvent] = []
    delivered: list[LogicalEvent] = []
    in_flight: list[SendEvent] = []
    finished: set[str] = set()

    def handle(actions: list[SendEvent]) -> None:
        in_flight.extend(actions)

    for op, task_id, state, dt in steps:
        now += dt
        if op == "put":
            if state == "run":
                event = s.run_event(s.RUN_STARTED, "run-1", "d", P, at=AT)
            elif task_id in finished:
                continue
            else:
                event = task(task_id, state)
                if state == "completed":
                    finished.add(task_id)
            produced.append(event)
            handle(b.put(event, now))
        elif op == "tick":
            handle(b.tick(now))
        elif in_flight:
            send = in_flight.pop(0)
            if op == "ok":
                delivered.extend(send.events)
                handle(b.sent(send.txn_id, now))
            else:
                handle(b.failed(send.txn_id, now))
    # Matrix comes back for good.
    for _ in range(10_000):
        if in_flight:
            send = in_flight.pop(0)
            delivered.extend(send.events)
            handle(b.sent(send.txn_id, now))
        elif (due := b.next_due()) is not None:
            now = max(now, due)
            handle(b.tick(now))
        else:
            break
    assert b.idle

    def kept(events: list[LogicalEvent]) -> list[object]:
        return [
            (e.type, e.content.get("task_id"), e.content.get("status"))
            for e in events
            if e.type != s.TASK_STATUS or e.content["status"] == "completed"
        ]

    assert kept(delivered) == kept(produced)
    # Per task, what arrives is in the order it happened.
    for task_id in "abc":
        order = [e for e in produced if e.content.get("task_id") == task_id]
        got = [e for e in delivered if e.content.get("task_id") == task_id]
        positions = [next(i for i, x in enumerate(order) if x is e) for e in got]
        assert positions == sorted(positions)
    assert all(s.canonical_size(json.loads(json.dumps(e.to_json()))) > 0 for e in delivered)
