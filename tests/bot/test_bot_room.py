"""The room actor's watchdog over a turn in flight, on the real runtime (no Matrix needed)."""

import lambda_actors as la
from lambda_actors.bot.actors.outbox import Queued
from lambda_actors.bot.actors.room import _Room
from lambda_actors.bot.actors.services import DONE_KEY, SOURCE_KEY, BotServices
from lambda_actors.bot.config import parse_agents_config
from lambda_actors.bot.store import RoomBinding, Store

AGENTS = """
user_agents: {"@alice:x": agent-0}
agents:
  - {id: agent-0, base_url: "http://127.0.0.1:9/", workspace_path: /tmp/ws}
"""


class _Gone:
    """An address whose actor has stopped for good."""

    stopped = True


async def test_a_turn_whose_connection_is_gone_ends_with_an_error_instead_of_waiting_for_ever(tmp_path):
    store = Store.open(tmp_path / "db")
    message = {"event_id": "$m", "type": "m.room.message", "sender": "@alice:x", "content": {"msgtype": "m.text", "body": "hi"}}
    store.ingest([("$m", "!r:x", message, False)], "t1")
    store.bind_room(RoomBinding("!r:x", "@alice:x", "agent-0", 1))
    bot = BotServices(store, client=None, agents=parse_agents_config(AGENTS), user_id="@bot:x")
    sent: list = []

    async def outbox(ctx: la.ActorContext) -> None:
        async for msg in ctx.mailbox:
            if isinstance(msg, Queued):
                sent.extend(msg.items)

    async def probe(ctx: la.ActorContext) -> None:
        room = _Room(ctx, bot, "!r:x")
        room.in_flight, room.in_flight_to = "$m", _Gone()
        await room.check_in_flight()
        assert room.in_flight is None

    async with la.open_supervisor("node", [la.ChildSpec("outbox", outbox)]) as sup:
        sup.start_child(la.ChildSpec("probe", probe, restart="temporary"))
        with sup.subscribe() as events:
            exited = await events.wait_for(la.Exited, path="node/probe")
        assert exited.reason is None
    assert store.is_handled("$m")
    [notice] = sent
    assert "became unavailable" in notice.content["body"]
    assert notice.content[SOURCE_KEY] == "$m" and notice.content[DONE_KEY] is True
    store.close()
