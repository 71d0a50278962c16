"""Several nodes in one process on a real Synapse (SPEC 8.3): the cluster driver
(``node/dag-cluster``) with real Matrix, each node with its own account, a
real fake agent.

Each node is its heartbeat actor and its cluster driver under a supervisor of
its own, on its own DAG store; the rooms are fresh per test. What needs
processes (SIGKILLs, a homeserver restart) is tests/e2e/test_e2e_cluster.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from harness.synapse import SyncCursor

from lambda_actors.agent.fake import FakeAgent
from lambda_actors.dag import status as st
from lambda_actors.dag.actors.cluster_brain import ClusterBrain
from lambda_actors.dag.actors.heartbeats import heartbeat_actor
from lambda_actors.dag.parts import DagParts
from lambda_actors.dag.store import DagStore, NotFound, RunRecord, open_dag_store
from lambda_actors.matrix import MatrixClient
from lambda_actors.matrix.events import OtherEvent, parse_events
from lambda_actors.node.api import ApiError
from lambda_actors.node.config import (
    DagCluster,
    DagConfig,
    DagLocal,
    ExecutionMode,
    NodeConfig,
    NodeHeartbeat,
)
from lambda_actors.runtime.spec import ChildSpec
from lambda_actors.runtime.supervisor import Supervisor, open_supervisor

CHAIN = """
dag_id = "chain"
[[tasks]]
id = "first"
agent = "agent-0"
prompt = "one {slow}"
[[tasks]]
id = "second"
deps = ["first"]
agent = "agent-0"
prompt = "two after {{{{ first.output }}}}"
"""


@dataclass
class Rooms:
    heartbeat: str
    cluster: str


@dataclass
class Node:
    node_id: str
    client: MatrixClient
    store: DagStore
    parts: DagParts
    stack: AsyncExitStack
    sup: Supervisor

    @property
    def brain(self) -> ClusterBrain:
        return self.parts.brains[-1]

    async def stop(self) -> None:
        """A clean stop: the driver ends, then the heartbeat actor writes ``stopped``."""
        await self.stack.aclose()

    async def run(self, toml: str, workers: tuple[str, ...] = ()) -> str:
        stored = await self.parts.control.publish(toml, "test")
        if workers:
            return str(await self.parts.control.confirm(stored.dag_id, stored.version, "test", workers))
        return str(await self.parts.control.confirm(stored.dag_id, stored.version, "test"))

    async def finished(self, run_id: str) -> RunRecord:
        """The run once final in this node's store (waits on its transitions, never on a timer)."""
        while True:
            async with self.parts.control.watch(run_id) as feed:
                record = self._record(run_id)
                if record is not None and record.final:
                    return record
                async for _ in feed:
                    pass
            record = self._record(run_id)
            if record is not None and record.final:
                return record

    def _record(self, run_id: str) -> RunRecord | None:
        try:
            return self.store.run(run_id)
        except NotFound:
            return None


class Cluster:
    def __init__(self, tmp_path: Path, synapse: Any, matrix_user: Any, matrix_client: Any, agent: FakeAgent) -> None:
        self.tmp_path = tmp_path
        self.synapse = synapse
        self.matrix_user = matrix_user
        self.matrix_client = matrix_client
        self.agent = agent
        self.accounts: dict[str, MatrixClient] = {}
        self.bystander: MatrixClient | None = None
        tag = secrets.token_hex(4)
        self.server = ""
        self.rooms_tag = tag

    def rooms(self, server: str) -> Rooms:
        return Rooms(f"#hb-{self.rooms_tag}:{server}", f"#cluster-{self.rooms_tag}:{server}")

    @asynccontextmanager
    async def node(self, node_id: str, mode: str, *, accept: bool = True, slots: int = 2) -> AsyncIterator[Node]:
        stack = AsyncExitStack()
        async with stack:
            node = await self.start(node_id, mode, accept=accept, slots=slots, stack=stack)
            yield node

    async def start(
        self, node_id: str, mode: str, *, accept: bool = True, slots: int = 2, stack: AsyncExitStack | None = None
    ) -> Node:
        stack = stack or AsyncExitStack()
        client = self.accounts.get(node_id)
        if client is None:
            client = self.accounts[node_id] = self.matrix_client(self.matrix_user(node_id))
        rooms = self.rooms(client.server_name)
        config = NodeConfig(
            node_id=node_id, listen=None,
            dag=DagConfig(
                execution_mode=ExecutionMode(mode), accept_remote_tasks=accept, local=DagLocal(slots),
                cluster=DagCluster(room=rooms.cluster),
            ),
            node_heartbeat=NodeHeartbeat(room=rooms.heartbeat, interval_secs=5),
        )
        store = open_dag_store(self.tmp_path / f"{node_id}-{secrets.token_hex(2)}.sqlite3")
        stack.callback(store.close)
        agent = self.agent

        def url(agent_id: str) -> str | None:
            return agent.base_url if agent_id == "agent-0" else None

        parts = DagParts.local(store, config, url, known_agents=lambda a: a == "agent-0")
        parts.services.retry_backoff_s = 0.05

        async def heartbeats(ctx: Any) -> None:
            await heartbeat_actor(ctx, client, store, rooms.heartbeat, node_id, interval_secs=5)

        children = [ChildSpec("dag-heartbeat", heartbeats, shutdown=10.0), *parts.cluster_children(client)]
        sup = await stack.enter_async_context(open_supervisor("node", children))
        node = Node(node_id, client, store, parts, stack, sup)
        await self.ready(node)
        return node

    async def ready(self, node: Node) -> None:
        """Until the node's driver has caught up (the API's calls are refused before)."""
        with trio.fail_after(30):
            await node.parts.cluster_ready.wait()

    async def watch(self) -> SyncCursor:
        """A cursor of a bystander account in the cluster room, from now on."""
        if self.bystander is None:
            self.bystander = self.matrix_client(self.matrix_user("bystander"))
        await self.bystander.join(self.rooms(self.bystander.server_name).cluster)
        return await SyncCursor.start(self.bystander)

    async def room_events(self, client: MatrixClient) -> list[OtherEvent]:
        """The cluster room's events, oldest first."""
        room_id = await client.join(self.rooms(client.server_name).cluster)
        events: list[OtherEvent] = []
        token = None
        while True:
            page = await client.messages(room_id, start=token, direction="f", limit=500)
            events += [e for e in parse_events(room_id, page["chunk"]) if isinstance(e, OtherEvent)]
            if not page["chunk"] or not isinstance(page.get("end"), str):
                return events
            token = page["end"]


@pytest.fixture
async def cluster(tmp_path: Path, synapse: Any, matrix_user: Any, matrix_client: Any) -> AsyncIterator[Cluster]:
    agent = FakeAgent(tmp_path / "ws", stall_seconds=4.0)
    agent.workspace.mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        yield Cluster(tmp_path, synapse, matrix_user, matrix_client, agent)
        nursery.cancel_scope.cancel()


def is_event(event_type: str, run_id: str, **fields: Any) -> Any:
    def match(item: Any) -> bool:
        return (
            isinstance(item, OtherEvent) and item.event_type == event_type and item.content.get("run_id") == run_id
            and all(item.content.get(k) == v for k, v in fields.items())
        )

    return match


def of_run(events: list[OtherEvent], event_type: str, run_id: str) -> list[OtherEvent]:
    return [e for e in events if e.event_type == event_type and e.content.get("run_id") == run_id]


async def test_matrix_mode_a_task_offered_is_claimed_and_completed_by_another_node(cluster: Cluster) -> None:
    with trio.fail_after(60):
        async with cluster.node("a", "matrix", accept=False) as a, cluster.node("b", "matrix") as b:
            cursor = await cluster.watch()
            run_id = await a.run(CHAIN.format(slow=""))
            await cursor.wait_for(is_event(st.RUN_COMPLETED, run_id), within=30)
            record = await a.finished(run_id)
            assert str(record.status) == "completed"
            assert {t.task_id: str(t.status) for t in a.store.tasks(run_id)} == {"first": "completed", "second": "completed"}
            assert a.store.output(run_id, "second").text  # the output came back through the room
            events = await cluster.room_events(a.client)
            claims = of_run(events, st.TASK_CLAIMED, run_id)
            assert [(e.content["task_id"], e.content["claimed_by"], e.sender) for e in claims] == [
                ("first", "b", b.client.user_id), ("second", "b", b.client.user_id)
            ]
            offers = of_run(events, st.TASK_ASSIGNED, run_id)
            assert [e.content["assigned_to"] for e in offers] == [None, None]
            # The second prompt carried the first's output (rendered by the coordinator).
            assert "two after" in offers[1].content["prompt"] and len(offers[1].content["prompt"]) > len("two after ")
            ends = of_run(events, st.RUN_COMPLETED, run_id)
            assert [e.sender for e in ends] == [a.client.user_id]
            spec = of_run(events, st.RUN_SPEC, run_id)
            assert len(spec) == 1 and spec[0].content["node_id"] == "a"


async def test_inputs_and_outputs_too_long_for_their_events_travel_whole_through_the_content_repository(
    cluster: Cluster,
) -> None:
    long = " ".join(f"word-{i:05d}" for i in range(4_000))  # 40 KB: over the 32 KiB inline limit
    with trio.fail_after(60):
        async with cluster.node("a", "matrix", accept=False) as a, cluster.node("b", "matrix"):
            cursor = await cluster.watch()
            run_id = await a.run(CHAIN.format(slow=long))
            await cursor.wait_for(is_event(st.RUN_COMPLETED, run_id), within=30)
            # The agent saw both prompts whole: the first as written, the second with the first's whole output.
            first, second = a.store.output(run_id, "first").text, a.store.output(run_id, "second").text
            assert long.strip() in first and first.strip() in second
            events = await cluster.room_events(a.client)
            offers = of_run(events, st.TASK_ASSIGNED, run_id)
            results = of_run(events, st.TASK_RESULT, run_id)
            assert [("prompt" in e.content, e.content.get("input_url", "")[:6]) for e in offers] == [(False, "mxc://")] * 2
            assert [("output" in e.content, e.content.get("output_url", "")[:6]) for e in results] == [(False, "mxc://")] * 2


async def test_federation_assigns_to_the_named_worker_only(cluster: Cluster) -> None:
    with trio.fail_after(60):
        async with cluster.node("a", "federation") as a, cluster.node("b", "federation") as b, \
                cluster.node("c", "federation") as c:
            cursor = await cluster.watch()
            run_id = await a.run(CHAIN.format(slow=""), workers=("c",))
            await cursor.wait_for(is_event(st.RUN_COMPLETED, run_id), within=30)
            record = await a.finished(run_id)
            assert str(record.status) == "completed"
            events = await cluster.room_events(b.client)
            assigned = of_run(events, st.TASK_ASSIGNED, run_id)
            assert [e.content["assigned_to"] for e in assigned] == ["c", "c"]
            claims = of_run(events, st.TASK_CLAIMED, run_id)
            assert {(e.content["claimed_by"], e.sender) for e in claims} == {("c", c.client.user_id)}


async def test_federation_without_workers_is_refused_with_the_fix(cluster: Cluster) -> None:
    with trio.fail_after(30):
        async with cluster.node("a", "federation") as a:
            with pytest.raises(ApiError) as caught:
                await a.run(CHAIN.format(slow=""))
            assert caught.value.status == 400 and "--workers node-a,node-b" in caught.value.message


async def test_a_coordinator_stopped_cleanly_is_taken_over_and_the_run_completes(cluster: Cluster) -> None:
    with trio.fail_after(90):
        async with cluster.node("b", "matrix") as b:
            a = await cluster.start("a", "matrix", accept=False)
            # The first task stalls on the agent for a few seconds: b holds it while a stops.
            cursor = await cluster.watch()
            run_id = await a.run(CHAIN.format(slow="[[stall]]"))
            await cursor.wait_for(is_event(st.TASK_CLAIMED, run_id, task_id="first"), within=30)
            await a.stop()  # writes `stopped`: b declares a dead at once and takes over
            await cursor.wait_for(is_event(st.RUN_COMPLETED, run_id), within=60)
            record = await b.finished(run_id)
            assert str(record.status) == "completed"
            events = await cluster.room_events(b.client)
            leaders = [
                (e.content["node_id"], e.content["epoch"]) for e in events
                if e.event_type == st.RUN_COORDINATOR and e.state_key == run_id
            ]
            assert leaders == [("a", 1), ("b", 2)]
            ends = of_run(events, st.RUN_COMPLETED, run_id)
            assert [e.sender for e in ends] == [b.client.user_id]
            # The task b held when a stopped was adopted, not run again.
            assert [e.content["task_id"] for e in of_run(events, st.TASK_CLAIMED, run_id)] == ["first", "second"]
            finals = [e.content["task_id"] for e in of_run(events, st.TASK_STATUS, run_id) if e.content["status"] == "completed"]
            assert sorted(finals) == ["first", "second"]


async def test_a_driver_restarted_mid_task_replays_the_room_and_runs_its_task_again(cluster: Cluster) -> None:
    with trio.fail_after(90):
        async with cluster.node("a", "matrix", accept=False) as a, cluster.node("b", "matrix") as b:
            cursor = await cluster.watch()
            run_id = await a.run(CHAIN.format(slow="[[stall]]"))
            chat = f"dag.{run_id}.first.1"
            await cluster.agent.wait_until(lambda: len(cluster.agent.received_messages(chat)) == 1)  # b's copy runs
            b.parts.cluster_ready = trio.Event()
            b.sup.kill("dag-cluster", "the test restarts it")  # its copy goes with it (not declared dead)
            await b.parts.cluster_ready.wait()
            assert len(b.parts.brains) == 2 and b.brain.worker.running() == {(run_id, "first"): 1}
            await cursor.wait_for(is_event(st.RUN_COMPLETED, run_id), within=60)
            events = await cluster.room_events(a.client)
            # Claimed once; run twice with the same epoch (the first copy died with its driver).
            assert [e.content["task_id"] for e in of_run(events, st.TASK_CLAIMED, run_id)] == ["first", "second"]
            results = [(e.content["task_id"], e.content["epoch"]) for e in of_run(events, st.TASK_RESULT, run_id)]
            assert results == [("first", 1), ("second", 1)]
            assert len(cluster.agent.received_messages(chat)) == 2
            assert str((await a.finished(run_id)).status) == "completed"


async def test_the_drivers_sync_client_tries_each_request_once() -> None:
    # A homeserver that drops every connection: the twin fails on the first
    # try (the liveness observer hears of it at once); the retries of the
    # node's client would have hidden a short outage.
    from lambda_actors.matrix.errors import HomeserverUnavailable

    connections = 0

    async def drop(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, drop, 0)
        port = listeners[0].socket.getsockname()[1]
        client = MatrixClient(f"http://127.0.0.1:{port}", access_token="t", user_id="@n:hs", device_id="D")
        twin = client.trying_once()
        assert (twin.user_id, twin.device_id) == ("@n:hs", "D")
        with trio.fail_after(10), pytest.raises(HomeserverUnavailable):
            await twin.sync(None, timeout_ms=0)
        assert connections == 1
        await client.aclose()
        nursery.cancel_scope.cancel()
