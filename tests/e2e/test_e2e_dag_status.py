"""End to end: a node's DAG status room and heartbeats on the real homeserver (SPEC 8.1, 8.2).

The first test drives the broadcaster directly with a DagStore filled with
status events as the run actors write them; the hybrid-run test runs a real
DAG with the node's own DAG actors (node/dag) and a fake agent beside the
broadcaster. Matrix going away is a real network failure: the node's client
talks to Synapse through a TCP relay the test cuts (connections dropped, new
ones closed at once) and restores.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from harness.synapse import SyncCursor

import lambda_actors as la
from lambda_actors.agent.fake import FakeAgent
from lambda_actors.dag import status as st
from lambda_actors.dag.actors.broadcast import SEQ_KEY, broadcaster_actor, poke
from lambda_actors.dag.actors.heartbeats import heartbeat_actor
from lambda_actors.dag.actors.matrix_side import BROADCAST_PATH
from lambda_actors.dag.actors.rooms import ensure_room
from lambda_actors.dag.board import DAG_KEY
from lambda_actors.dag.heartbeat import DAG_ACTIVE, HEARTBEAT, NODE_STATUS
from lambda_actors.dag.parts import DagParts
from lambda_actors.dag.spec import parse_dag
from lambda_actors.dag.store import DagStore, TaskStatus, open_dag_store
from lambda_actors.dag.subscribe import Watch, logical_events
from lambda_actors.matrix import Invite, MatrixClient, OtherEvent
from lambda_actors.matrix.errors import MatrixError
from lambda_actors.matrix.retry import RetryPolicy
from lambda_actors.node.config import DagConfig, DagLocal, ExecutionMode, NodeConfig

AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
TASKS = [f"t{i}" for i in range(8)]
SPEC = "dag_id = \"e2e\"\nowner = \"{owner}\"\n" + "".join(
    f'[[tasks]]\nid = "{t}"\nagent = "agent-0"\nprompt = "p"\n' for t in TASKS
)


class Relay:
    """A TCP relay to Synapse that the test can cut and restore."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut = False
        self.refused = 0
        self._scopes: set[trio.CancelScope] = set()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for scope in self._scopes:
                scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.cut:
            self.refused += 1
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream)
                    nursery.start_soon(_pump, upstream, client)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._scopes.discard(scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        async for data in source:
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await sink.aclose()


def _progress(store: DagStore, run_id: str) -> st.Progress:
    return st.Progress(**store.progress(run_id))


def _status(store: DagStore, run_id: str, task: str, status: str) -> tuple[str, dict[str, Any]]:
    ev = st.task_status(run_id, task, status, agent_type="agent-0", session_id=f"{run_id}:{task}", attempt=1,
                        progress=_progress(store, run_id), at=AT)
    return ev.type, dict(ev.content)


def _run_event(store: DagStore, run_id: str, kind: str) -> tuple[str, dict[str, Any]]:
    ev = st.run_event(kind, run_id, "e2e", _progress(store, run_id), at=AT)
    return ev.type, dict(ev.content)


def _task(store: DagStore, run_id: str, task: str) -> None:
    store.start_attempt(run_id, task, 1.0, events=[_status(store, run_id, task, "running")])
    out = st.task_output(run_id, task, f"output of {task}", at=AT)
    store.finish(run_id, task, TaskStatus.COMPLETED, 2.0, output=f"output of {task}",
                 events=[_status(store, run_id, task, "completed"), (out.type, dict(out.content))])


async def _history(client: MatrixClient, room_id: str) -> list[dict[str, Any]]:
    """The room's events, oldest first."""
    events: list[dict[str, Any]] = []
    start = None
    while True:
        body = await client.messages(room_id, start=start, limit=100)
        events += body["chunk"]
        start = body.get("end")
        if not body["chunk"] or start is None:
            return list(reversed(events))


async def _until(predicate: Any, within: float = 15.0) -> None:
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path):
    opened = open_dag_store(tmp_path / "bot.sqlite3")
    yield opened
    opened.close()


async def test_a_run_reaches_the_status_room_batched_in_order_across_an_outage_and_the_board_ends_final(
    synapse, matrix_user, matrix_client, store
):
    node_user, owner_user = matrix_user("node"), matrix_user("owner")
    owner: MatrixClient = matrix_client(owner_user)
    invites = await SyncCursor.start(owner)
    spec = parse_dag(SPEC.format(owner=owner_user.user_id))
    store.publish(spec, "test", 0.0)
    run_id = store.create_run(spec, 0.0).run_id
    created = st.run_created(run_id, "e2e", "e2e.toml", 4, False, at=AT)
    store.append_status_events(run_id, [(created.type, dict(created.content))], 0.0)
    alias = f"#dag-status-{node_user.user_id[1:].split(':')[0]}:{owner.server_name}"
    relay = Relay(int(synapse.url.rsplit(":", 1)[1]))

    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        # One try per request: the outage shows at once, the broadcaster waits it out.
        node = MatrixClient(f"http://127.0.0.1:{relay.port}", access_token=node_user.access_token,
                            user_id=node_user.user_id, device_id=node_user.device_id, retry=RetryPolicy(attempts=1))
        spec_ = la.ChildSpec("dag-broadcast", functools.partial(broadcaster_actor, node_id="n1"), args=(node, store, alias))
        async with la.open_supervisor("node", [spec_]) as sup:
            # The owner is invited when the run starts; the room was made with its alias.
            invite = await invites.wait_for(lambda item: isinstance(item, Invite))
            await _until(lambda: store.run(run_id).room_id is not None)
            room_id = store.run(run_id).room_id
            assert room_id is not None and invite.room_id == room_id
            await owner.join(room_id)
            store.set_run_status(run_id, "running", 0.5, events=[_run_event(store, run_id, st.RUN_STARTED)])
            for task in TASKS[:3]:
                _task(store, run_id, task)
            poke(sup.registry)
            await _until(lambda: store.status_backlog() == 0)

            # Matrix goes away: the run goes on writing, nothing is sent, nothing crashes.
            relay.set_cut(True)
            for task in TASKS[3:6]:
                _task(store, run_id, task)
                poke(sup.registry)
            await _until(lambda: relay.refused >= 2)
            assert store.status_backlog() > 0
            relay.set_cut(False)
            for task in TASKS[6:]:
                _task(store, run_id, task)
            store.set_run_status(run_id, "completed", 3.0, events=[_run_event(store, run_id, st.RUN_COMPLETED)])
            poke(sup.registry)
            await _until(lambda: store.status_backlog() == 0, within=40)
            board_id = store.run(run_id).board_event_id
            assert board_id is not None

            async def board_final() -> dict[str, Any] | None:
                for event in reversed(await _history(owner, room_id)):
                    content = event.get("content", {})
                    new = content.get("m.new_content")
                    if new and content.get("m.relates_to", {}).get("event_id") == board_id:
                        return new if new["body"].splitlines()[0].endswith("completed") else None
                return None

            with trio.fail_after(15):
                while (final := await board_final()) is None:
                    await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
        await node.aclose()

    events = await _history(owner, room_id)
    status_events = [e for e in events if e["type"].startswith("cis.dag.")]
    logical = [pair for e in status_events for pair in st.unpack(e["type"], e["content"])]
    types = [t for t, _ in logical]
    assert types[0] == st.RUN_CREATED and types[1] == st.RUN_STARTED and types[-1] == st.RUN_COMPLETED
    assert any(e["type"] == st.BATCH for e in status_events)  # windows of several went out as one event
    assert len(status_events) < len(logical)
    finals = {c["task_id"]: c["status"] for t, c in logical if t == st.TASK_STATUS}
    assert finals == {t: "completed" for t in TASKS}
    assert [c["task_id"] for t, c in logical if t == st.TASK_OUTPUT] == TASKS  # in order, each once
    ranges = [e["content"][SEQ_KEY] for e in status_events]
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # posted once, in the store's order
    assert final[DAG_KEY] == {"run_id": run_id} and f"{len(TASKS)}/{len(TASKS)} completed" in final["body"]
    posts = [e for e in events if e["type"] == "m.room.message" and DAG_KEY in e["content"] and "m.relates_to" not in e["content"]]
    assert [e["event_id"] for e in posts] == [board_id]  # one board, edited
    # Found again by its alias: the same room, not a new one.
    assert await ensure_room(owner, alias, name="x", topic="x") == room_id

    # A crash after the sends landed but before the store heard: a restarted
    # broadcaster reads the room's newest status event of its own and posts nothing again.
    store._db.execute("UPDATE dag_status_events SET sent = 0")
    store._db.commit()
    again = matrix_client(node_user)
    spec_ = la.ChildSpec("dag-broadcast", functools.partial(broadcaster_actor, node_id="n1"), args=(again, store, alias))
    async with la.open_supervisor("node", [spec_]):
        await _until(lambda: store.status_backlog() == 0)
    after = [e for e in await _history(owner, room_id) if e["type"].startswith("cis.dag.")]
    assert len(after) == len(status_events)


def _status_of(event: object, node_id: str) -> str | None:
    if isinstance(event, OtherEvent) and event.source.get("type") == NODE_STATUS and event.source.get("state_key") == node_id:
        status = event.source.get("content", {}).get("status")
        return status if isinstance(status, str) else None
    return None


async def test_heartbeats_and_liveness_online_then_stopped_on_a_clean_stop(matrix_user, matrix_client, store):
    node_user = matrix_user("hbnode")
    node: MatrixClient = matrix_client(node_user)
    me, _ = await node.whoami()
    room = f"#node-heartbeat-{me[1:].split(':')[0]}:{node.server_name}"
    room_id = await ensure_room(node, room, name="Node heartbeats", topic="test")
    cursor = await SyncCursor.start(node)
    fn = functools.partial(heartbeat_actor, agents=lambda: ["agent-0"], interval_secs=1.0, delay_ms=3000, restart_every_s=1.0)
    seen: list[str] = []

    def record(event: object) -> bool:
        if isinstance(event, OtherEvent) and event.source.get("type") in (HEARTBEAT, DAG_ACTIVE):
            seen.append(event.source["type"])
        return seen.count(HEARTBEAT) >= 2 and DAG_ACTIVE in seen

    async with la.open_supervisor("node", [la.ChildSpec("hb", fn, args=(node, store, room, "node-e2e"), shutdown=10)]):
        await cursor.wait_for(lambda e: _status_of(e, "node-e2e") == "online")
        await cursor.wait_for(record)
        # The delayed offline is pending with the homeserver while the node lives.
        assert any(d.get("state_key") == "node-e2e" for d in await node.delayed_events())
    state = await node.get_state(room_id, NODE_STATUS, "node-e2e")
    assert state is not None and state["status"] == "stopped"
    assert not any(d.get("state_key") == "node-e2e" for d in await node.delayed_events())
    beat = await node.messages(room_id, limit=20, event_filter={"types": [HEARTBEAT]})
    content = beat["chunk"][0]["content"]
    assert content["capabilities"]["agents"] == ["agent-0"] and 0 <= content["resources"]["memory_percent"] <= 100


async def test_a_running_node_has_its_status_room_and_says_it_is_online_in_the_heartbeat_room_any_node_may_write(
    bot_stack, matrix_user, matrix_client
):
    # The bot as the loopback stack runs it: node.toml's defaults (hybrid,
    # status and heartbeats on), so the node's tree starts both actors.
    watcher: MatrixClient = matrix_client(matrix_user("watcher"))
    server = bot_stack.bot_id.split(":", 1)[1]

    async def joined(alias: str, *, refused: int | None = None) -> str | int:
        """The room's id once the alias exists and lets us in, or the status
        ``refused`` when the homeserver refuses the join with it."""
        with trio.fail_after(60):
            while True:  # the alias appears when the node's actor has made the room
                try:
                    return await watcher.join(alias)
                except MatrixError as exc:
                    if exc.status == refused:
                        return exc.status
                    # 404: not made yet; a 403 for a while just after (seen:
                    # the alias resolves before the public join rule applies).
                    if exc.status not in (403, 404):
                        raise
                await trio.sleep(0.2)

    heartbeat_room = await joined(f"#node-heartbeat-default:{server}")
    assert isinstance(heartbeat_room, str)
    cursor = await SyncCursor.start(watcher)
    if (await watcher.get_state(heartbeat_room, NODE_STATUS, bot_stack.node_id) or {}).get("status") != "online":
        await cursor.wait_for(lambda e: _status_of(e, bot_stack.node_id) == "online")
    # Every node writes its own status there, whoever made the room: the
    # watcher stands for a second node (its own account, level 0).
    await watcher.put_state(heartbeat_room, NODE_STATUS, {"node_id": "second", "status": "online"}, "second")
    # The status room exists and is invitation only (a run's owner is invited).
    assert await joined(f"#dag-status-{bot_stack.node_id}:{server}", refused=403) == 403


# -- a real hybrid run with Matrix cut mid-run ------------------------------------------------

HYBRID_FIRST = [f"a{i}" for i in range(4)]
HYBRID_SECOND = [f"b{i}" for i in range(4)]
HYBRID_SPEC = "dag_id = \"hybrid\"\nowner = \"{owner}\"\nmax_workers = 4\n" + "".join(
    f'[[tasks]]\nid = "{t}"\nagent = "agent-0"\nprompt = "first"\n' for t in HYBRID_FIRST
) + "".join(
    f'[[tasks]]\nid = "{t}"\nagent = "agent-0"\nprompt = "second"\ndeps = {HYBRID_FIRST!r}\n'.replace("'", '"')
    for t in HYBRID_SECOND
)


class HeldAgent(FakeAgent):
    """A fake agent that answers the second layer's prompts only once
    ``release`` is set, so the test decides when the run's second half runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = trio.Event()

    async def _answer(self, session: Any, message: Any) -> None:  # type: ignore[override]  # the test's hold
        if "second" in message.text:
            await self.release.wait()
        await super()._answer(session, message)


async def test_a_hybrid_run_completes_while_matrix_is_cut_and_its_status_room_catches_up_in_order(
    synapse, matrix_user, matrix_client, store, tmp_path
):
    # The node's own DAG actors (node/dag) run the tasks against a fake agent;
    # the broadcaster, as matrix_side starts it in hybrid mode, reaches
    # Synapse only through the relay the test cuts.
    node_user, owner_user = matrix_user("hnode"), matrix_user("howner")
    owner: MatrixClient = matrix_client(owner_user)
    config = NodeConfig(node_id="hybrid-e2e", dag=DagConfig(execution_mode=ExecutionMode.HYBRID, local=DagLocal(4)))
    agent = HeldAgent(tmp_path, chunks=1)
    relay = Relay(int(synapse.url.rsplit(":", 1)[1]))
    parts = DagParts.local(store, config, lambda _: agent.base_url, known_agents=lambda a: a == "agent-0")
    assert parts.broadcasting

    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        await nursery.start(agent.serve)
        node = MatrixClient(f"http://127.0.0.1:{relay.port}", access_token=node_user.access_token,
                            user_id=node_user.user_id, device_id=node_user.device_id, retry=RetryPolicy(attempts=1))
        room = config.dag_broadcast.room_for(config.node_id, node.server_name)
        broadcaster = la.ChildSpec(BROADCAST_PATH.rsplit("/", 1)[1], functools.partial(
            broadcaster_actor, node_id=config.node_id), args=(node, store, room))
        async with la.open_supervisor("node", [*parts.children(), broadcaster]):
            control = parts.control
            stored = await control.publish(HYBRID_SPEC.format(owner=owner_user.user_id), "test")
            run_id = await control.confirm(stored.dag_id, stored.version, "test")
            async with control.watch(run_id) as feed:
                # The first layer's statuses reach the room while Matrix is up.
                await _until(lambda: all(str(store.task(run_id, t).status) == "completed" for t in HYBRID_FIRST))
                await _until(lambda: store.status_backlog() == 0 and store.run(run_id).room_id is not None)
                room_id = store.run(run_id).room_id
                assert room_id is not None

                # Matrix goes away mid-run: the second layer runs and the run ends all the same.
                relay.set_cut(True)
                agent.release.set()
                with trio.fail_after(15):
                    async for _event in feed:
                        if store.run(run_id).final:
                            break
            assert relay.cut and str(store.run(run_id).status) == "completed"
            assert all(str(t.status) == "completed" for t in store.tasks(run_id))
            # Nothing of the second half went out, and the broadcaster did try.
            assert store.status_backlog() > 0
            await _until(lambda: relay.refused >= 1)
            assert store.status_backlog() > 0

            relay.set_cut(False)
            await _until(lambda: store.status_backlog() == 0, within=30)
        nursery.cancel_scope.cancel()
        await node.aclose()

    # A subscriber (subscribe.py's pure parts) reads the room's history after the run.
    await owner.join(room_id)
    events = await _history(owner, room_id)
    status_events = [e for e in events if e["type"].startswith("cis.dag.")]
    watch = Watch()
    logical = []
    for raw in status_events:
        for index, item in enumerate(logical_events(raw)):
            watch.add(item, index)
            logical.append(item)
    assert watch.final_table() == {(run_id, t): "completed" for t in HYBRID_FIRST + HYBRID_SECOND}
    # The store's outbox went out once, in its order: the sends' seq ranges
    # follow each other without a gap or an overlap (a range may carry fewer
    # events than seqs: a task's intermediate status waiting behind a later
    # one is replaced by it, status.py's coalescing; nothing else is).
    ranges = [e["content"][SEQ_KEY] for e in status_events]
    assert ranges[0][0] == 1 and all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    assert logical[0].type == st.RUN_CREATED and [i.type for i in logical].count(st.RUN_COMPLETED) == 1
    assert logical[-1].type == st.RUN_COMPLETED
    lifecycle = ["pending", "running", "completed"]
    for task in HYBRID_FIRST + HYBRID_SECOND:
        seen = [i.content["status"] for i in logical if i.type == st.TASK_STATUS and i.content["task_id"] == task]
        assert seen[-1] == "completed" and seen.count("completed") == 1
        assert seen == sorted(seen, key=lifecycle.index)  # never back in time
    outputs = [i.content["task_id"] for i in logical if i.type == st.TASK_OUTPUT]
    assert sorted(outputs) == sorted(HYBRID_FIRST + HYBRID_SECOND)  # each once
    # The second layer's outputs reached the room after the first's (the run's order).
    assert set(outputs[:4]) == set(HYBRID_FIRST)
