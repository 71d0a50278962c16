"""End to end: delayed events (MSC4140) on the test homeserver, through MatrixClient.

A node's liveness (SPEC 8.2) rests on these calls: a delayed ``offline``
state event the homeserver writes by itself unless restarted in time.
Short delays keep the module fast; each wait is for the event itself.
"""

from __future__ import annotations

import pytest
import trio
from harness.synapse import SyncCursor

from lambda_actors.dag.heartbeat import NODE_STATUS, delayed_events_offered
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
