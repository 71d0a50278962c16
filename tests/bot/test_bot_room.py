"""The room actor as an executor, on the real runtime and a real store (no Matrix needed):
poison events are recorded and set aside, a turn whose connection ends is
told through a monitor, !remove deletes the file."""

from __future__ import annotations

from pathlib import Path

import trio

import lambda_actors as la
from lambda_actors.bot.actors.outbox import Queued
from lambda_actors.bot.actors.room import room_actor
from lambda_actors.bot.actors.services import DONE_KEY, ERROR_KEY, POISON_MARK, SOURCE_KEY, BotServices
from lambda_actors.bot.actors.turns import Deliver, TurnDone
from lambda_actors.bot.config import parse_agents_config
from lambda_actors.bot.files import save_incoming
from lambda_actors.bot.store import RoomBinding, Store

ROOM = "!r:x"


def agents(workspace: Path):
    return parse_agents_config(
        f"""
user_agents: {{"@alice:x": agent-0}}
agents:
  - {{id: agent-0, base_url: "http://127.0.0.1:9/", workspace_path: "{workspace}"}}
"""
    )


def message(event_id: str, body: str) -> dict:
    return {"event_id": event_id, "type": "m.room.message", "sender": "@alice:x", "content": {"msgtype": "m.text", "body": body}}


class Sent:
    """What the test's outbox actor was told, and a way to wait for it."""

    def __init__(self) -> None:
        self.items: list = []
        self._changed = trio.Event()

    def add(self, items) -> None:
        self.items.extend(items)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list:
        while len(self.items) < count:
            await self._changed.wait()
        return self.items


def tree(sent: Sent, *extra_children) -> list:
    async def outbox(ctx: la.ActorContext) -> None:
        async for msg in ctx.mailbox:
            if isinstance(msg, Queued):
                sent.add(msg.items)

    return [
        la.ChildSpec("outbox", outbox),
        la.SupervisorSpec("agents", children=[la.SupervisorSpec("agent-0", intensity=10)]),
        # Room crashes are the point here: allow them.
        la.SupervisorSpec("rooms", intensity=10, period=60.0),
        *extra_children,
    ]


async def test_an_event_that_crashes_the_room_three_times_is_set_aside_and_the_room_goes_on(tmp_path):
    store = Store.open(tmp_path / "db")
    store.ingest([("$p", ROOM, message("$p", f"boom {POISON_MARK}"), False), ("$h", ROOM, message("$h", "!help"), False)], "t1")
    store.bind_room(RoomBinding(ROOM, "@alice:x", "agent-0", 1))
    bot = BotServices(store, client=None, agents=agents(tmp_path), user_id="@bot:x", faults=frozenset({"poison"}))
    sent = Sent()
    async with la.open_supervisor("node", tree(sent)) as sup:
        rooms = sup.registry.supervisor("node/rooms")
        with sup.subscribe() as events:
            rooms.start_child(la.ChildSpec(ROOM, room_actor, args=(bot, ROOM)))
            aside, help_reply = await sent.wait_for(2)
            # The supervisor saw each crash (the handler re-raises).
            for _ in range(3):
                exited = await events.wait_for(la.Exited, path=f"node/rooms/{ROOM}")
                assert "InjectedFault" in repr(exited.reason)
    assert aside.content[ERROR_KEY] == "set_aside" and aside.content[SOURCE_KEY] == "$p" and aside.content[DONE_KEY]
    assert "set aside; the operator has the details" in aside.content["body"]
    assert help_reply.content[SOURCE_KEY] == "$h" and "Commands:" in help_reply.content["body"]
    [letter] = store.dead_letters()
    assert (letter.event_id, letter.sender, letter.failures) == ("$p", "@alice:x", 3)
    assert "InjectedFault" in letter.error and "Traceback" in letter.trace
    assert store.is_handled("$p") and store.is_handled("$h")
    store.close()


async def _connection_that_ends_without_answering(ctx: la.ActorContext, seen: list) -> None:
    msg = await ctx.mailbox.receive()
    seen.append(msg)


async def test_a_turn_whose_connection_ends_before_answering_ends_with_an_error(tmp_path):
    store = Store.open(tmp_path / "db")
    store.ingest([("$m", ROOM, message("$m", "hi"), False)], "t1")
    store.bind_room(RoomBinding(ROOM, "@alice:x", "agent-0", 1))
    bot = BotServices(store, client=None, agents=agents(tmp_path), user_id="@bot:x")
    sent, seen = Sent(), []
    async with la.open_supervisor("node", tree(sent)) as sup:
        # The chat's connection: takes the message, then its incarnation ends.
        sup.registry.get_or_start(
            ("chat", "agent-0", 1),
            sup.registry.supervisor("node/agents/agent-0"),
            la.ChildSpec("chat-1", _connection_that_ends_without_answering, args=(seen,), restart="temporary"),
        )
        sup.registry.supervisor("node/rooms").start_child(la.ChildSpec(ROOM, room_actor, args=(bot, ROOM)))
        [notice] = await sent.wait_for(1)
    assert isinstance(seen[0], Deliver) and seen[0].event_id == "$m"
    assert notice.content[ERROR_KEY] == "undeliverable" and notice.content[SOURCE_KEY] == "$m"
    assert "became unavailable" in notice.content["body"]
    assert store.is_handled("$m")
    store.close()


async def _connection_that_answers_once_without_telling(ctx: la.ActorContext, store: Store, sent: Sent) -> None:
    msg = await ctx.mailbox.receive()
    if ctx.attempt == 0 and not store.is_handled(msg.event_id) and msg.event_id == "$1":
        # Answered, then gone before it said so (TurnDone never sent).
        store.finish(msg.event_id)
        return
    store.finish(msg.event_id)
    sent.add([msg])
    await msg.room.send(TurnDone(msg.event_id))


async def test_a_turn_answered_by_a_connection_that_ended_before_saying_so_does_not_hold_up_the_next(tmp_path):
    store = Store.open(tmp_path / "db")
    store.ingest([("$1", ROOM, message("$1", "one"), False), ("$2", ROOM, message("$2", "two"), False)], "t1")
    store.bind_room(RoomBinding(ROOM, "@alice:x", "agent-0", 1))
    bot = BotServices(store, client=None, agents=agents(tmp_path), user_id="@bot:x")
    sent = Sent()
    async with la.open_supervisor("node", tree(sent)) as sup:
        sup.registry.get_or_start(
            ("chat", "agent-0", 1),
            sup.registry.supervisor("node/agents/agent-0"),
            la.ChildSpec("chat-1", _connection_that_answers_once_without_telling, args=(store, sent), restart="transient"),
        )
        sup.registry.supervisor("node/rooms").start_child(la.ChildSpec(ROOM, room_actor, args=(bot, ROOM)))
        [second] = await sent.wait_for(1)
    # The second message reached the (restarted) connection, and nobody was told of an error.
    assert isinstance(second, Deliver) and second.event_id == "$2"
    assert store.is_handled("$1") and store.is_handled("$2")
    store.close()


async def test_remove_deletes_the_staged_file_from_the_workspace(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    kept = save_incoming(workspace, "keep.txt", b"k", "20260101-000000")
    dropped = save_incoming(workspace, "drop.txt", b"d", "20260101-000000")
    store = Store.open(tmp_path / "db")
    store.stage(ROOM, kept, "keep.txt", 1)
    store.stage(ROOM, dropped, "drop.txt", 1)
    store.ingest([("$r", ROOM, message("$r", "!remove 2"), False)], "t1")
    store.bind_room(RoomBinding(ROOM, "@alice:x", "agent-0", 1))
    bot = BotServices(store, client=None, agents=agents(workspace), user_id="@bot:x")
    sent = Sent()
    async with la.open_supervisor("node", tree(sent)) as sup:
        sup.registry.supervisor("node/rooms").start_child(la.ChildSpec(ROOM, room_actor, args=(bot, ROOM)))
        [reply] = await sent.wait_for(1)
    assert reply.content["body"] == "Removed drop.txt."
    assert (workspace / kept).exists() and not (workspace / dropped).exists()
    assert [f.filename for f in store.staged(ROOM)] == ["keep.txt"]
    store.close()
