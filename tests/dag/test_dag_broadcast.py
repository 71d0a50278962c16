"""The broadcaster actor against a recording homeserver stand-in: order, batching,
exactly-once across a crash, outages waited out, coalesced statuses marked done,
long outputs summarised, the board, merged pokes; and the heartbeat's resources.

The homeserver is a small in-memory stand-in (as in test_bot_outbox.py) so
these run on Trio's virtual clock; the real homeserver is in
tests/e2e/test_e2e_dag_status.py.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

import lambda_actors as la
from lambda_actors.dag import status as st
from lambda_actors.dag.actors.broadcast import BROADCAST_KEY, SEQ_KEY, broadcaster_actor, poke
from lambda_actors.dag.actors.heartbeats import memory_percent
from lambda_actors.dag.board import DAG_KEY
from lambda_actors.dag.spec import parse_dag
from lambda_actors.dag.store import DagStore, TaskStatus, open_dag_store
from lambda_actors.matrix.errors import HomeserverUnavailable

AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
ROOM = "!status:x"


class Homeserver:
    """The calls the broadcaster makes, recorded; ``down`` fails them all."""

    user_id = "@node:x"

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []  # (type, content) as the room has them
        self.by_txn: dict[str, str] = {}
        self.edits: dict[str, dict[str, Any]] = {}  # board event id -> its latest content
        self.invited: list[str] = []
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise HomeserverUnavailable("connection refused")

    async def join(self, room: str) -> str:
        self._check()
        return ROOM

    async def whoami(self) -> tuple[str, str | None]:
        return self.user_id, None

    async def messages(self, room_id: str, **kwargs: Any) -> dict[str, Any]:
        self._check()
        chunk = [{"type": t, "content": c, "sender": self.user_id} for t, c in reversed(self.events)]
        return {"start": "s", "chunk": [e for e in chunk if e["type"].startswith("cis.")][:20]}

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str) -> str:
        self._check()
        await trio.sleep(0.01)
        if txn_id in self.by_txn:  # the homeserver's idempotence
            return self.by_txn[txn_id]
        event_id = f"$e{len(self.events)}"
        self.by_txn[txn_id] = event_id
        self.events.append((event_type, content))
        return event_id

    async def edit(self, room_id: str, target: str, content: dict[str, Any], txn_id: str) -> str:
        event_id = await self.send(room_id, "m.room.message", {"m.new_content": content, "m.relates_to": {"event_id": target}}, txn_id)
        self.edits[target] = content
        return event_id

    async def invite(self, room_id: str, user_id: str) -> None:
        self._check()
        self.invited.append(user_id)

    def logical(self) -> list[tuple[str, dict[str, Any]]]:
        return [pair for t, c in self.events for pair in st.unpack(t, c)]

    def status_sends(self) -> int:
        return sum(1 for t, _ in self.events if t.startswith("cis."))


SPEC = """
dag_id = "pipeline"
owner = "@alice:x"
""" + "".join(f'[[tasks]]\nid = "t{i}"\nagent = "agent-0"\nprompt = "p"\n' for i in range(6))


@pytest.fixture
def store(tmp_path: Path):
    opened = open_dag_store(tmp_path / "bot.sqlite3")
    yield opened
    opened.close()


def _progress(store: DagStore, run_id: str) -> st.Progress:
    return st.Progress(**store.progress(run_id))


class Run:
    """Writes a run's transitions with their status events, as the run actors do."""

    def __init__(self, store: DagStore, now: float = 1000.0) -> None:
        spec = parse_dag(SPEC)
        store.publish(spec, "test", now)
        self.store = store
        self.run_id = store.create_run(spec, now, events=[]).run_id
        self.tasks = [t.id for t in spec.tasks]
        self._event(st.run_created(self.run_id, "pipeline", "p.toml", 4, False, at=AT))

    def _event(self, event: st.LogicalEvent) -> None:
        self.store.append_status_events(self.run_id, [(event.type, dict(event.content))], 1000.0)

    def _status(self, task: str, status: str, attempt: int) -> tuple[str, dict[str, Any]]:
        ev = st.task_status(self.run_id, task, status, agent_type="agent-0", session_id=f"{self.run_id}:{task}",
                            attempt=attempt, progress=_progress(self.store, self.run_id), at=AT)
        return ev.type, dict(ev.content)

    def start(self) -> None:
        ev = st.run_event(st.RUN_STARTED, self.run_id, "pipeline", _progress(self.store, self.run_id), at=AT)
        self.store.set_run_status(self.run_id, "running", 1000.0, events=[(ev.type, dict(ev.content))])

    def task_runs(self, task: str) -> None:
        self.store.start_attempt(self.run_id, task, 1001.0, events=[self._status(task, "running", 1)])

    def task_completes(self, task: str, output: str = "ok") -> None:
        out = st.task_output(self.run_id, task, output, at=AT)
        self.store.finish(self.run_id, task, TaskStatus.COMPLETED, 1002.0, output=output)
        self.store.append_status_events(self.run_id, [self._status(task, "completed", 1), (out.type, dict(out.content))], 1002.0)

    def completes(self) -> None:
        ev = st.run_event(st.RUN_COMPLETED, self.run_id, "pipeline", _progress(self.store, self.run_id), at=AT)
        self.store.set_run_status(self.run_id, "completed", 1003.0, events=[(ev.type, dict(ev.content))])

    def whole(self) -> None:
        self.start()
        for task in self.tasks:
            self.task_runs(task)
            self.task_completes(task)
        self.completes()


def _broadcaster(store: DagStore, hs: Homeserver, **kwargs: Any) -> la.ChildSpec:
    fn = functools.partial(broadcaster_actor, board_interval=2.0, wall=lambda: 1010.0, **kwargs)
    return la.ChildSpec("dag-broadcast", fn, args=(hs, store, "#dag-status-n1:x"), mailbox_capacity=4, overflow="fail")


async def _until(predicate: Any) -> None:
    with trio.fail_after(600):  # virtual time: fails only if it never happens
        while not predicate():
            await trio.sleep(0.05)


def _final_statuses(hs: Homeserver) -> dict[str, str]:
    return {c["task_id"]: c["status"] for t, c in hs.logical() if t == st.TASK_STATUS}


async def test_a_run_goes_out_in_order_batched_and_every_event_is_marked_sent(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    run.whole()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]):
        await _until(lambda: store.status_backlog() == 0)
    written = 1 + 1 + 6 * 3 + 1
    logical = hs.logical()
    # Everything was written before the broadcaster started: one window, one batch.
    status_events = [(t, c) for t, c in hs.events if t.startswith("cis.")]
    assert len(status_events) == 1 and status_events[0][0] == st.BATCH
    assert [t for t, _ in logical][:2] == [st.RUN_CREATED, st.RUN_STARTED] and logical[-1][0] == st.RUN_COMPLETED
    # Each task's `running` waited in the same window as its `completed`: coalesced.
    assert len(logical) == written - 6
    assert _final_statuses(hs) == {t: "completed" for t in run.tasks}
    assert status_events[0][1][SEQ_KEY] == [1, written]
    assert hs.invited == ["@alice:x"] and store.run(run.run_id).room_id == ROOM


async def test_events_apart_in_time_go_out_in_their_own_windows_as_their_own_type(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    async with la.open_supervisor("node", [_broadcaster(store, hs)]) as sup:
        await _until(lambda: hs.status_sends() == 1)
        assert [t for t, _ in hs.events if t.startswith("cis.")] == [st.RUN_CREATED]  # a window of one: its own type
        run.start()
        poke(sup.registry)
        await _until(lambda: hs.status_sends() == 2)
        assert [t for t, _ in hs.events if t.startswith("cis.")] == [st.RUN_CREATED, st.RUN_STARTED]


async def test_matrix_down_waits_and_catches_up_in_order_with_nothing_lost(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    async with la.open_supervisor("node", [_broadcaster(store, hs)]) as sup:
        await _until(lambda: hs.status_sends() == 1)
        hs.down = True
        run.start()
        for task in run.tasks[:3]:
            run.task_runs(task)
            poke(sup.registry)
            await trio.sleep(1.0)  # windows of their own, each failing
            run.task_completes(task)
            poke(sup.registry)
        await trio.sleep(120)  # a long outage: the broadcaster keeps trying, never crashes
        assert sup.registry.lookup(BROADCAST_KEY).state.status.name == "RUNNING"
        assert store.status_backlog() > 0
        hs.down = False
        for task in run.tasks[3:]:
            run.task_runs(task)
            run.task_completes(task)
        run.completes()
        poke(sup.registry)
        await _until(lambda: store.status_backlog() == 0)
    types = [t for t, _ in hs.logical()]
    assert types[0] == st.RUN_CREATED and types[1] == st.RUN_STARTED and types[-1] == st.RUN_COMPLETED
    assert _final_statuses(hs) == {t: "completed" for t in run.tasks}
    outputs = [c["task_id"] for t, c in hs.logical() if t == st.TASK_OUTPUT]
    assert outputs == run.tasks  # in order, each once


async def test_a_send_that_landed_before_a_crash_is_not_posted_again(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    run.whole()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]):
        await _until(lambda: store.status_backlog() == 0)
    # The crash: the room has it, the store never heard (its mark was lost).
    store._db.execute("UPDATE dag_status_events SET sent = 0")
    store._db.commit()
    before = hs.status_sends()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]):
        await _until(lambda: store.status_backlog() == 0)
    assert hs.status_sends() == before


async def test_a_long_output_goes_out_summarised_and_a_poke_never_piles_up(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    run.start()
    run.task_runs("t0")
    big = "x" * (st.OUTPUT_LIMIT + 5000)
    run.store.finish(run.run_id, "t0", TaskStatus.COMPLETED, 1002.0, output=big)
    # Written whole (as a writer that forgot to summarise would): the broadcaster summarises.
    store.append_status_events(run.run_id, [(st.TASK_OUTPUT, {"run_id": run.run_id, "task_id": "t0", "output": big, "timestamp": "2026-12-02T10:00:00.000Z"})], 1002.0)
    async with la.open_supervisor("node", [_broadcaster(store, hs)]) as sup:
        for _ in range(100):
            poke(sup.registry)
        assert sup.registry.lookup(BROADCAST_KEY).statistics().depth <= 1
        await _until(lambda: store.status_backlog() == 0)
    (output,) = [c for t, c in hs.logical() if t == st.TASK_OUTPUT]
    assert output["truncated"] is True and output["size"] == len(big) and "output" not in output
    assert store.output(run.run_id, "t0").text == big  # the whole is kept


async def test_the_board_is_posted_once_and_ends_showing_the_final_table(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    async with la.open_supervisor("node", [_broadcaster(store, hs)]) as sup:
        run.start()
        for task in run.tasks:
            run.task_runs(task)
            poke(sup.registry)
            await trio.sleep(0.3)
            run.task_completes(task)
            poke(sup.registry)
            await trio.sleep(0.3)
        run.completes()
        poke(sup.registry)
        await _until(lambda: store.run(run.run_id).board_event_id is not None and store.status_backlog() == 0)
        board_id = store.run(run.run_id).board_event_id
        await _until(lambda: "completed" in hs.edits.get(board_id, {}).get("body", "").splitlines()[0])
    posts = [c for t, c in hs.events if t == "m.room.message" and DAG_KEY in c]
    assert len(posts) == 1  # one board, then edits
    final = hs.edits[board_id]
    assert final[DAG_KEY] == {"run_id": run.run_id}
    assert "6/6 completed" in final["body"]
    assert all(f"{t}  completed" in final["body"] for t in run.tasks)
    edits = sum(1 for t, c in hs.events if t == "m.room.message" and "m.new_content" in c)
    assert edits <= 4  # ~4 s of run: at most one edit per 2 s, plus the final one


async def test_a_restarted_broadcaster_edits_the_board_it_posted_before(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    run.start()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]):
        await _until(lambda: store.run(run.run_id).board_event_id is not None)
    board_id = store.run(run.run_id).board_event_id
    for task in run.tasks:
        run.task_runs(task)
        run.task_completes(task)
    run.completes()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]):
        await _until(lambda: "6/6 completed" in hs.edits.get(board_id, {}).get("body", ""))
    assert sum(1 for t, c in hs.events if t == "m.room.message" and DAG_KEY in c) == 1


def test_memory_percent_reads_meminfo_and_is_zero_without_it(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n")
    assert memory_percent(str(meminfo)) == 75
    assert memory_percent(str(tmp_path / "missing")) == 0


def test_a_poke_with_no_broadcaster_does_nothing():
    poke(la.Registry())



async def test_with_no_batching_window_each_event_goes_out_as_it_comes(autojump_clock, store):
    hs = Homeserver()
    run = Run(store)
    run.whole()
    async with la.open_supervisor("node", [_broadcaster(store, hs, batch_interval_ms=0)]):
        await _until(lambda: store.status_backlog() == 0)
    assert [c["task_id"] for t, c in hs.logical() if t == st.TASK_OUTPUT] == run.tasks
    assert _final_statuses(hs) == {t: "completed" for t in run.tasks}


async def test_a_backlog_larger_than_what_is_held_in_memory_goes_out_whole_and_in_order(autojump_clock, store, monkeypatch):
    from lambda_actors.dag.actors import broadcast

    monkeypatch.setattr(broadcast, "WINDOW", 4)
    hs = Homeserver()
    hs.down = True
    run = Run(store)
    run.whole()
    async with la.open_supervisor("node", [_broadcaster(store, hs)]) as sup:
        await trio.sleep(30)  # the node comes up during an outage
        hs.down = False
        poke(sup.registry)
        await _until(lambda: store.status_backlog() == 0)
    types = [t for t, _ in hs.logical()]
    assert types[0] == st.RUN_CREATED and types[-1] == st.RUN_COMPLETED
    assert [c["task_id"] for t, c in hs.logical() if t == st.TASK_OUTPUT] == run.tasks
    assert _final_statuses(hs) == {t: "completed" for t in run.tasks}


async def test_a_stop_while_the_homeserver_is_away_at_start_up_is_not_held_up(autojump_clock, store):
    hs = Homeserver()
    hs.down = True
    spec = la.ChildSpec(
        "dag-broadcast", functools.partial(broadcaster_actor, wall=lambda: 1010.0),
        args=(hs, store, "#dag-status-n1:x"), shutdown=60,
    )
    async with la.open_supervisor("node", [spec]):
        await _until(lambda: hs.calls >= 3)  # still looking for its room
        stopping = trio.current_time()
    # Virtual time: the start-up was cancelled at the stop, not after the 60 s shutdown.
    assert trio.current_time() - stopping < 1
