"""A real 429 from a Synapse that keeps its default rate limits (0.2 messages/s, burst 10)."""

from __future__ import annotations

import pytest
import structlog

from lambda_actors.matrix import RateLimited, RetryPolicy, content, parse_events


async def test_matrix_ratelimit_429_is_waited_out_then_the_send_succeeds(
    synapse_default_limits, matrix_user, matrix_client
):
    user = matrix_user("busy", server=synapse_default_limits)
    client = matrix_client(user, server=synapse_default_limits)
    room_id = await client.create_room(name="busy room")
    event_ids: list[str] = []
    with structlog.testing.capture_logs() as logs:
        # The burst of 10 (partly spent on creating the room) runs out within
        # 11 messages: send until one is refused with a 429, which the client
        # must wait out and then succeed.
        while not any(entry["event"] == "matrix.rate_limited" for entry in logs):
            assert len(event_ids) <= 10, "Synapse's default limits should have refused part of the burst"
            n = len(event_ids)
            event_ids.append(await client.send(room_id, "m.room.message", content.text(f"m{n}"), f"burst-{n}"))
    [wait] = [entry for entry in logs if entry["event"] == "matrix.rate_limited"]
    assert 0 < wait["retry_after_s"] <= 5
    assert client.rate_limited == 1  # what /metrics shows as lambda_matrix_rate_limited_total
    assert len(set(event_ids)) == len(event_ids)
    page = await client.messages(room_id, limit=20, event_filter={"types": ["m.room.message"]})
    assert [e.body for e in parse_events(room_id, page["chunk"])][::-1] == [f"m{n}" for n in range(len(event_ids))]

    # A caller that will not wait that long gets the typed error instead.
    impatient = matrix_client(user, server=synapse_default_limits, retry=RetryPolicy(max_rate_limit_wait_s=0.01))
    with pytest.raises(RateLimited) as refused:
        await impatient.send(room_id, "m.room.message", content.text("one more"), "burst-more")
    assert refused.value.status == 429 and refused.value.errcode == "M_LIMIT_EXCEEDED"
    assert refused.value.retry_after_s > 0.01
    assert impatient.rate_limited == 1  # counted even when not waited out
