"""``lambda-actors subscribe``: the pure parts, then against Synapse (history, batches, Ctrl-C)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import trio

from lambda_actors.bot.config import MatrixSettings, Secret
from lambda_actors.dag import heartbeat as hb, status as s
from lambda_actors.dag.status import Batcher, Progress
from lambda_actors.dag.subscribe import Logical, Watch, _Output, json_line, logical_events, parse_since, watch

AT = datetime(2026, 12, 2, 10, 30, 1, tzinfo=UTC)


def raw(event_type: str, content: dict, event_id: str = "$e1", ts: int = 1_000, **extra) -> dict:
    return {"type": event_type, "content": content, "event_id": event_id, "sender": "@node:x", "origin_server_ts": ts, **extra}


def status(task_id: str, state: str, done: int, run: str = "run-1") -> s.LogicalEvent:
    return s.task_status(run, task_id, state, agent_type="agent-0", session_id=f"{run}:{task_id}", attempt=1, progress=Progress(done, 3), at=AT)


# -- pure parts --------------------------------------------------------------------------------


def test_a_batch_is_unpacked_into_its_logical_events_in_order() -> None:
    batch = {"events": [status("a", "running", 0).to_json(), status("b", "running", 0).to_json()]}
    events = logical_events(raw(s.BATCH, batch))
    assert [(e.type, e.content["task_id"]) for e in events] == [(s.TASK_STATUS, "a"), (s.TASK_STATUS, "b")]
    line = json.loads(json_line(events[1]))
    assert line["type"] == s.TASK_STATUS and line["content"]["task_id"] == "b" and line["event_id"] == "$e1"


def test_other_events_and_junk_carry_no_logical_events() -> None:
    assert logical_events(raw("m.room.message", {"body": "hi"})) == []
    assert logical_events({"type": s.TASK_STATUS, "content": "junk", "event_id": "$x", "sender": "@a:x"}) == []
    assert logical_events({"type": s.TASK_STATUS, "content": {}}) == []
    assert logical_events(raw(s.BATCH, {"events": None})) == []


def test_the_table_rows_follow_8_4_and_blocked_shows_a_warning() -> None:
    w = Watch()
    rows = [
        w.add(e)
        for e in (
            Logical(s.TASK_STATUS, status("analyze", "running", 1).content, 0, "$1", "@n:x"),
            Logical(s.TASK_STATUS, status("plan", "blocked", 2).content, 0, "$2", "@n:x"),
        )
    ]
    assert [(r.time, r.run_id, r.task, r.status, r.progress) for r in rows if r] == [
        ("10:30:01", "run-1", "analyze", "running", "1/3"),
        ("10:30:01", "run-1", "plan", "blocked", "⚠️"),
    ]


def test_the_same_event_seen_in_history_and_live_counts_once() -> None:
    w = Watch()
    event = Logical(s.TASK_STATUS, status("a", "running", 0).content, 0, "$1", "@n:x")
    assert w.add(event, 0) is not None
    assert w.add(event, 0) is None
    assert w.add(event, 1) is not None  # another element of the same batch
    assert len(w.rows) == 2


def test_a_heartbeat_room_gives_a_node_table() -> None:
    w = Watch()
    for e in logical_events(raw(hb.NODE_STATUS, {"node_id": "node-a", "status": "online"}, "$s", 1_000, state_key="node-a")):
        w.add(e)
    for e in logical_events(raw(hb.HEARTBEAT, {"node_id": "node-a", "status": "online", "resources": {"active_sessions": 2}}, "$h", 2_000)):
        w.add(e)
    for e in logical_events(raw(hb.NODE_STATUS, {"node_id": "node-b", "status": "offline"}, "$t", 3_000, state_key="node-b")):
        w.add(e)
    assert w.is_heartbeat_room
    nodes = {n.node_id: n for n in w.nodes(now_ms=10_000)}
    assert nodes["node-a"].liveness == "online" and nodes["node-a"].active_sessions == 2
    assert nodes["node-b"].liveness == "offline"
    assert {n.node_id: n.liveness for n in w.nodes(now_ms=2_000 + 90_001)}["node-a"] == "offline"


async def test_on_a_terminal_the_table_is_a_live_rich_table_of_tasks_or_of_nodes() -> None:
    from rich.console import Console

    stream = io.StringIO()
    output = _Output("table", stream)
    output.console = Console(file=stream, force_terminal=True, width=100, height=30)
    output.refreshes = True
    w = Watch()
    async with output.live(w):
        for e in logical_events(raw(s.TASK_STATUS, dict(status("analyze", "running", 1).content))):
            output.row(w.add(e), w)  # rows go to the live table, not as lines
        output.refresh(w)
    shown = stream.getvalue()
    assert "RUN_ID" in shown and "analyze" in shown and "running" in shown
    nodes = Watch()
    for e in logical_events(raw(hb.HEARTBEAT, {"node_id": "node-a", "status": "online"}, "$h", 10**13)):
        nodes.add(e)
    stream.truncate(0)
    async with output.live(nodes):
        output.refresh(nodes)
    assert "LIVENESS" in stream.getvalue() and "node-a" in stream.getvalue()


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45)])
def test_since_takes_durations(text: str, seconds: int) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "1w", "-5m"])
def test_since_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text)


# -- against Synapse ------------------------------------------------------------------------------

TASKS = ("analyze", "plan", "test")


@pytest.fixture
async def finished_run_room(matrix_user, matrix_client):
    """A status room holding one finished run, as a node's batcher sent it."""
    node = matrix_user("dagnode")
    watcher = matrix_user("watcher")
    client = matrix_client(node)
    await client.whoami()
    room_id = await client.create_room(name="dag-status", invite=[watcher.user_id])
    b = Batcher("node-a.1", batch_interval_ms=500)
    produced = [s.run_created("run-1", "refactor", "refactor.toml", 2, False, at=AT)]
    produced.append(s.run_event(s.RUN_STARTED, "run-1", "refactor", Progress(0, 3), at=AT))
    for done, task_id in enumerate(TASKS):
        produced += [status(task_id, "running", done), status(task_id, "completed", done + 1)]
    produced.append(s.task_output("run-1", "test", "y" * 20_000, at=AT))
    produced.append(s.run_event(s.RUN_COMPLETED, "run-1", "refactor", Progress(3, 3), at=AT))
    sends = 0
    # Two windows: the first half of the run, then the rest.
    for now, window in ((0.0, produced[:5]), (10.0, produced[5:])):
        for event in window:
            assert b.put(event, now) == []
        actions = b.tick(now + 0.5)
        while actions:
            [send] = actions
            await client.send(room_id, send.event_type, send.content, send.txn_id)
            sends += 1
            actions = b.sent(send.txn_id, now + 0.5)
    assert b.idle
    return room_id, watcher, sends, b.delivered


async def test_subscribe_json_rebuilds_the_final_table_of_a_finished_run(finished_run_room, synapse) -> None:
    room_id, watcher, sends, delivered = finished_run_room
    settings = MatrixSettings(synapse.url, watcher.user_id, access_token=Secret(watcher.access_token))
    stream = io.StringIO()
    output = _Output("json", stream)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch, settings, room_id, 3600, output)  # started: the history is printed
            nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sends == 2  # two batches
    assert len(lines) == delivered == 8  # a running status replaced by its completed in each window
    rebuilt = Watch()
    for index, line in enumerate(lines):
        rebuilt.add(Logical(line["type"], line["content"], line["origin_server_ts"], line["event_id"] + str(index), line["sender"]))
    assert rebuilt.final_table() == {("run-1", t): "completed" for t in TASKS}
    assert rebuilt.runs == {"run-1": "completed"}
    output_line = next(line for line in lines if line["type"] == s.TASK_OUTPUT)
    assert output_line["content"]["truncated"] is True and output_line["content"]["size"] == 20_000

    # The same history as a table, piped (no terminal): one line per event.
    stream = io.StringIO()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch, settings, room_id, 3600, _Output("table", stream))
            nursery.cancel_scope.cancel()
    table = stream.getvalue().splitlines()
    assert len(table) == 8
    assert table[-2].split() == ["10:30:01", "run-1", "test", "output", "20000", "bytes"]
    assert table[-1].split() == ["10:30:01", "run-1", "(run)", "completed", "3/3"]


async def test_the_command_prints_history_then_exits_0_on_ctrl_c(finished_run_room, synapse) -> None:
    room_id, watcher, _, delivered = finished_run_room
    env = {
        **os.environ,
        "MATRIX_HOMESERVER": synapse.url,
        "MATRIX_USER_ID": watcher.user_id,
        "MATRIX_PASSWORD": watcher.password,
    }
    env.pop("MATRIX_ACCESS_TOKEN", None)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "lambda_actors", "subscribe", room_id, "--format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    received = b""
    with trio.fail_after(30):
        while received.count(b"\n") < delivered:  # every logical event of the run
            chunk = await process.stdout.receive_some()
            assert chunk, "subscribe ended before printing the history"
            received += chunk
        process.send_signal(signal.SIGINT)
        code = await process.wait()
    err = await process.stderr.receive_some()
    assert code == 0, err.decode()
    assert b"Traceback" not in err
    types = [json.loads(line)["type"] for line in received.decode().splitlines()]
    assert types[0] == s.RUN_CREATED and types[-1] == s.RUN_COMPLETED


def test_a_mistake_in_the_environment_or_since_exits_2_with_one_line(monkeypatch, capsys) -> None:
    from lambda_actors.cli import main

    for name in ("MATRIX_HOMESERVER", "MATRIX_USER_ID", "MATRIX_ACCESS_TOKEN", "MATRIX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert main(["subscribe", "!room:x"]) == 2
    assert "MATRIX_HOMESERVER: not set" in capsys.readouterr().err
    monkeypatch.setenv("MATRIX_HOMESERVER", "http://127.0.0.1:9")
    monkeypatch.setenv("MATRIX_USER_ID", "@w:x")
    monkeypatch.setenv("MATRIX_ACCESS_TOKEN", "t")
    assert main(["subscribe", "!room:x", "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert "--since: 'soon' is not a duration" in err and "Traceback" not in err


def test_a_room_that_cannot_be_read_exits_1_and_a_bad_token_3(synapse, matrix_user, monkeypatch, capsys) -> None:
    from lambda_actors.cli import main

    watcher = matrix_user("lost")
    monkeypatch.setenv("MATRIX_HOMESERVER", synapse.url)
    monkeypatch.setenv("MATRIX_USER_ID", watcher.user_id)
    monkeypatch.setenv("MATRIX_ACCESS_TOKEN", watcher.access_token)
    monkeypatch.delenv("MATRIX_PASSWORD", raising=False)
    assert main(["subscribe", "#no-such-room:" + synapse.server_name]) == 1
    assert "cannot read #no-such-room" in capsys.readouterr().err
    monkeypatch.setenv("MATRIX_ACCESS_TOKEN", "not-a-token")
    assert main(["subscribe", "#no-such-room:" + synapse.server_name]) == 3
    assert "refused the credentials" in capsys.readouterr().err
