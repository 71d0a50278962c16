"""The status broadcaster against Synapse: batching in the room, and an outage that loses nothing.

The outage is real: the node's client reaches Synapse through a small TCP
relay that the test switches off (connections refused and cut) and on.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio

from lambda_actors.dag import status as s
from lambda_actors.dag.status import Batcher, LogicalEvent, Progress, broadcast
from lambda_actors.matrix import MatrixClient
from lambda_actors.matrix.retry import RetryPolicy
from lambda_actors.runtime.backoff import Backoff

AT = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
TASKS = [f"t{i:03d}" for i in range(200)]


class Relay:
    """A TCP relay to the homeserver that can be switched off and on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.port = 0
        self._cut = trio.CancelScope()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def down(self) -> None:
        self.up = False
        self._cut.cancel()  # open connections are cut too

    def restore(self) -> None:
        self._cut = trio.CancelScope()
        self.up = True

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with self._cut:
                async with await trio.open_tcp_stream("127.0.0.1", self.target_port) as server:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(_pump, server, client, nursery.cancel_scope)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


async def wait_until(predicate) -> None:
    """Poll a condition of the code under test (it has no event to wait on)."""
    while not predicate():
        await trio.sleep(0.01)


def task(task_id: str, state: str, done: int) -> LogicalEvent:
    return s.task_status(
        "run-1", task_id, state, agent_type="agent-0", session_id=f"run-1:{task_id}", attempt=1,
        progress=Progress(done, len(TASKS)), at=AT,
    )


async def room_events(client: MatrixClient, room_id: str) -> tuple[int, list[tuple[str, dict]]]:
    """(room events of ours, the logical events they carry), oldest first."""
    raw: list[dict] = []
    start = None
    while True:
        page = await client.messages(room_id, start=start, direction="f", limit=100)
        raw += [e for e in page["chunk"] if e["type"].startswith("cis.dag.")]
        if not page["chunk"] or "end" not in page:
            break
        start = page["end"]
    return len(raw), [(t, dict(c)) for e in raw for t, c in s.unpack(e["type"], e["content"])]


@pytest.fixture
async def node(matrix_user, matrix_client, synapse) -> AsyncIterator[tuple[MatrixClient, str, Relay]]:
    user = matrix_user("statusnode")
    direct: MatrixClient = matrix_client(user)
    room_id = await direct.create_room(name="dag-status")
    relay = Relay(int(synapse.url.rsplit(":", 1)[1]))
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        # Through the relay, failing fast: the batcher does the waiting.
        quick = RetryPolicy(attempts=1, backoff=Backoff(min=0.05, max=0.05))
        via_relay = MatrixClient(f"http://127.0.0.1:{relay.port}", access_token=user.access_token, user_id=user.user_id, retry=quick)
        try:
            yield via_relay, room_id, relay
        finally:
            await via_relay.aclose()
            nursery.cancel_scope.cancel()


def run_events() -> list[LogicalEvent]:
    events = [s.run_created("run-1", "wide", "wide.toml", 8, False, at=AT)]
    events.append(s.run_event(s.RUN_STARTED, "run-1", "wide", Progress(0, len(TASKS)), at=AT))
    for done, task_id in enumerate(TASKS):
        events += [task(task_id, "running", done), task(task_id, "completed", done + 1)]
    events.append(s.run_event(s.RUN_COMPLETED, "run-1", "wide", Progress(len(TASKS), len(TASKS)), at=AT))
    return events


def finals(logical: list[tuple[str, dict]]) -> list[tuple[str, object]]:
    return [
        (t, c.get("task_id"))
        for t, c in logical
        if t != s.TASK_STATUS or c["status"] == "completed"
    ]


async def test_a_burst_of_a_run_goes_out_in_a_few_batched_events_in_order(node) -> None:
    client, room_id, _ = node
    batcher = Batcher("node-a.burst", batch_interval_ms=500)
    send_channel, receive_channel = trio.open_memory_channel[LogicalEvent](math.inf)
    produced = run_events()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(broadcast, client, room_id, batcher, receive_channel)
            with send_channel:
                for event in produced:
                    send_channel.send_nowait(event)  # never blocks, whatever the homeserver does
    sent, logical = await room_events(client, room_id)
    assert finals(logical) == finals([(e.type, dict(e.content)) for e in produced])
    # 403 logical events, one window: a handful of events, each under the limit.
    assert sent <= 3
    assert batcher.delivered == len(logical)


async def test_while_the_homeserver_is_away_the_run_goes_on_and_nothing_is_lost(node) -> None:
    client, room_id, relay = node
    batcher = Batcher("node-a.outage", batch_interval_ms=500, retry_initial_s=0.2, retry_max_s=0.5)
    send_channel, receive_channel = trio.open_memory_channel[LogicalEvent](math.inf)
    produced = run_events()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(broadcast, client, room_id, batcher, receive_channel)
            with send_channel:
                send_channel.send_nowait(produced[0])
                relay.down()
                for event in produced[1:]:
                    send_channel.send_nowait(event)
                # Wait for what matters: sends have failed while the run went
                # on, and the batcher holds it all, intermediate statuses folded.
                await wait_until(lambda: batcher.failures >= 2)
                assert batcher.delivered == 0
                assert batcher.backlog == len(produced) - len(TASKS)
                assert batcher.replaced == []  # memory stays bounded by the run
                relay.restore()
    _, logical = await room_events(client, room_id)
    assert finals(logical) == finals([(e.type, dict(e.content)) for e in produced])
