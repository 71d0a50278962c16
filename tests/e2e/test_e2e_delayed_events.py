"""End to end: delayed events (MSC4140) on the test homeserver, through MatrixClient.

A node's liveness (SPEC 8.2) rests on these calls: a delayed ``offline``
state event the homeserver writes by itself unless restarted in time.
Short delays keep the module fast; each wait is for the event itself.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
from harness.synapse import SyncCursor

from lambda_actors.dag.heartbeat import HEARTBEAT, NODE_STATUS, Liveness, delayed_events_offered, keep_alive, stale_delayed
from lambda_actors.matrix import MatrixClient, OtherEvent

NODE = "node-e2e"


@pytest.fixture
async def owner(matrix_user, matrix_client) -> MatrixClient:
    client: MatrixClient = matrix_client(matrix_user("node"))
    await client.whoami()
    return client


def _status_write(event: object) -> str | None:
    if isinstance(event, OtherEvent) and event.source.get("type") == NODE_STATUS and event.source.get("state_key") == NODE:
        status = event.source.get("content", {}).get("status")
        return status if isinstance(status, str) else None
    return None


async def test_the_test_homeserver_offers_delayed_events(owner: MatrixClient) -> None:
    assert delayed_events_offered(await owner.versions())


async def test_a_delayed_state_event_fires_after_its_delay_unless_restarted_then_is_gone(owner: MatrixClient) -> None:
    room = await owner.create_room(name="heartbeats")
    cursor = await SyncCursor.start(owner)
    await owner.put_state(room, NODE_STATUS, {"node_id": NODE, "status": "online"}, NODE)
    delay_id = await owner.put_state_delayed(room, NODE_STATUS, {"node_id": NODE, "status": "offline"}, NODE, delay_ms=1_500)
    assert any(item["delay_id"] == delay_id and item.get("state_key") == NODE for item in await owner.delayed_events())

    # Restarted, it is still pending; left alone, the homeserver writes it.
    assert await owner.update_delayed_event(delay_id, "restart") is True
    assert (await owner.get_state(room, NODE_STATUS, NODE) or {}).get("status") == "online"
    await cursor.wait_for(lambda event: _status_write(event) == "offline", within=15)
    assert (await owner.get_state(room, NODE_STATUS, NODE) or {}).get("status") == "offline"

    # Fired: it is gone, so a restart answers "not found" (the node re-registers).
    assert await owner.update_delayed_event(delay_id, "restart") is False
    assert all(item["delay_id"] != delay_id for item in await owner.delayed_events())


async def test_a_cancelled_delayed_event_never_fires(owner: MatrixClient) -> None:
    room = await owner.create_room(name="heartbeats")
    cursor = await SyncCursor.start(owner)
    delay_id = await owner.put_state_delayed(room, NODE_STATUS, {"node_id": NODE, "status": "offline"}, NODE, delay_ms=1_000)
    assert await owner.update_delayed_event(delay_id, "cancel") is True
    assert await owner.update_delayed_event(delay_id, "cancel") is False
    # A later write proves the cancelled one had its chance and did not come:
    # a second delayed event, longer than the first, fires alone.
    marker = await owner.put_state_delayed(room, NODE_STATUS, {"node_id": NODE, "status": "stopped"}, NODE, delay_ms=1_200)
    seen: list[str] = []

    def record(event: object) -> bool:
        status = _status_write(event)
        if status is not None:
            seen.append(status)
        return status == "stopped"

    await cursor.wait_for(record, within=15)
    assert seen == ["stopped"]
    assert await owner.update_delayed_event(marker, "send") is False


async def test_send_now_and_the_older_action_form_both_work(owner: MatrixClient) -> None:
    room = await owner.create_room(name="heartbeats")
    cursor = await SyncCursor.start(owner)
    # The older form (the action in the body), which this Synapse also offers.
    owner._delayed_action_in_body = True
    try:
        delay_id = await owner.send_delayed(room, "cis.node.test", {"n": 1}, "txn-delayed-1", delay_ms=600_000)
        assert await owner.update_delayed_event(delay_id, "send") is True
    finally:
        owner._delayed_action_in_body = False
    with trio.fail_after(15):
        await cursor.wait_for(lambda event: isinstance(event, OtherEvent) and event.source.get("type") == "cis.node.test")
    assert await owner.update_delayed_event(delay_id, "restart") is False


# -- a node's liveness, driven against Synapse ---------------------------------------------------


def _beat() -> tuple[dict, dict]:
    from datetime import UTC, datetime

    from lambda_actors.dag.heartbeat import dag_active_content, heartbeat_content

    now = datetime.now(UTC)
    return (
        heartbeat_content(NODE, None, "online", agents=["agent-0"], max_workers=2, version="test",
                          cpu_percent=1, memory_percent=1, active_sessions=0, at=now),
        dag_active_content(NODE, [], at=now),
    )


def _fast() -> Liveness:
    # Short delay and restarts so a death shows within a couple of seconds.
    return Liveness(delay_ms=2_000, restart_every_s=0.5, heartbeat_every_s=30.0)


async def test_a_node_that_dies_is_marked_offline_by_the_homeserver_and_a_clean_stop_writes_stopped(owner: MatrixClient) -> None:
    room = await owner.create_room(name="heartbeats")
    cursor = await SyncCursor.start(owner)
    with trio.fail_after(30):
        # A node runs, then dies (its task cancelled: no clean stop).
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(keep_alive, owner, room, NODE, _fast(), heartbeat=_beat, stop=trio.Event()))
            assert (await owner.get_state(room, NODE_STATUS, NODE) or {}).get("status") == "online"
            assert len(stale_delayed(await owner.delayed_events(), room, NODE)) == 1
            nursery.cancel_scope.cancel()
        await cursor.wait_for(lambda event: _status_write(event) == "offline", within=15)

        # Back at once (within the delay of a second death): it takes the
        # stale delayed event of its last run out before scheduling its own.
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(keep_alive, owner, room, NODE, _fast(), heartbeat=_beat, stop=trio.Event()))
            nursery.cancel_scope.cancel()
        [left_behind] = stale_delayed(await owner.delayed_events(), room, NODE)
        stop = trio.Event()
        # Heartbeats every 1.5 s: the third comes 3 s after "online", past the
        # 2 s delay, so seeing it with no offline before it shows the restarts.
        machine = Liveness(delay_ms=2_000, restart_every_s=0.5, heartbeat_every_s=1.5)
        seen: list[str] = []

        def third_beat(event: object) -> bool:
            if (status := _status_write(event)) is not None:
                seen.append(status)
            if isinstance(event, OtherEvent) and event.source.get("type") == HEARTBEAT:
                seen.append("beat")
            return seen.count("beat") == 3

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(keep_alive, owner, room, NODE, machine, heartbeat=_beat, stop=stop))
            assert left_behind not in stale_delayed(await owner.delayed_events(), room, NODE)
            await cursor.wait_for(third_beat)
            stop.set()
    assert "offline" not in seen[seen.index("online"):], seen
    assert machine.reregistered == 0
    assert machine.phase == "stopped"
    assert (await owner.get_state(room, NODE_STATUS, NODE) or {}).get("status") == "stopped"
    assert stale_delayed(await owner.delayed_events(), room, NODE) == []
