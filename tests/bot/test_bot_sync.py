"""The sync actor's rules: wakes never block intake, one walk over /sync,
what room state is believed when rebuilding, the chat-id high-water mark."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import trio

import lambda_actors as la
from lambda_actors.bot.actors.room import INVITE_TYPE, Wake
from lambda_actors.bot.actors.services import BINDING_STATE, ROOMS_PATH, SPACE_STATE
from lambda_actors.bot.actors.sync import CHAT_ID_BLOCK, inbox_entries, plan_chat_ids, trusted_state, wake_room
from lambda_actors.bot.config import AgentConfig, AgentsConfig
from lambda_actors.bot.store import RoomBinding
from lambda_actors.matrix.events import OtherEvent, parse_events

BOT = "@bot:x"
AGENTS = AgentsConfig(
    agents=(
        AgentConfig("agent-0", "Agent 0", "http://a0", Path("/w0")),
        AgentConfig("agent-1", "Agent 1", "http://a1", Path("/w1")),
    ),
    user_agents={"@alice:x": "agent-0", "@bob:x": "agent-1"},
)
BOTS = SimpleNamespace(user_id=BOT, agents=AGENTS)


# -- wakes --------------------------------------------------------------------


async def _never_reads(ctx):
    await trio.sleep_forever()


async def _records(ctx, seen):
    async for msg in ctx.mailbox:
        seen.append(msg)


async def test_a_room_with_a_full_mailbox_does_not_stop_wakes_for_other_rooms(autojump_clock):
    seen: list = []
    async with la.open_supervisor("node", [la.SupervisorSpec("rooms")]) as sup:
        rooms = sup.registry.supervisor(ROOMS_PATH)
        # A room that takes nothing from its mailbox (stuck, or parked: its
        # mailbox is kept for the next incarnation), with room for 3 messages.
        rooms.start_child(la.ChildSpec("!flooded:x", _never_reads, mailbox_capacity=3))
        rooms.start_child(la.ChildSpec("!quiet:x", _records, args=(seen,)))
        ctx = SimpleNamespace(registry=sup.registry, log=SimpleNamespace(info=lambda *a, **k: None))
        # 1,000 batches for the flooded room: each wake returns at once.
        for _ in range(1000):
            wake_room(ctx, BOTS, "!flooded:x")
        wake_room(ctx, BOTS, "!quiet:x")
        flooded = sup.registry.lookup(("room", "!flooded:x"))
        # Merged: the mailbox holds what it can, the rest are one pending wake.
        assert flooded.statistics().depth == 3
        assert flooded.statistics().blocked_senders == 0
        with trio.fail_after(1):  # virtual time: fails only if it never comes
            while not seen:
                await trio.sleep(0.01)
        assert seen == [Wake()]


# -- one walk over /sync ------------------------------------------------------


def _msg(event_id, sender="@alice:x"):
    return {"event_id": event_id, "sender": sender, "type": "m.room.message", "content": {"msgtype": "m.text", "body": event_id}}


def test_inbox_entries_keeps_order_skips_non_events_and_stores_invites():
    body = {
        "next_batch": "s9",
        "rooms": {
            "join": {
                "!a:x": {"timeline": {"events": [_msg("$1"), {"event_id": 5}, "junk", _msg("$2")]}},
                "!b:x": {"timeline": {"events": [_msg("$3")]}},
                "bad": "not a room",
            },
            "leave": {"!gone:x": {"timeline": {"events": [_msg("$left")]}}},
            "invite": {"!c:x": {"invite_state": {"events": []}}},
        },
    }
    entries = list(inbox_entries(body, BOT, first_sync=False))
    assert [(e[0], e[1], e[3]) for e in entries] == [
        ("$1", "!a:x", False),
        ("$2", "!a:x", False),
        ("$3", "!b:x", False),
        ("invite:!c:x:s9", "!c:x", False),
    ]
    assert entries[-1][2] == {"type": INVITE_TYPE, "invite": {"invite_state": {"events": []}}}


def test_first_sync_counts_history_up_to_the_bots_last_message_as_handled():
    body = {"next_batch": "s1", "rooms": {"join": {"!a:x": {"timeline": {"events": [
        _msg("$q1"), _msg("$a1", sender=BOT), _msg("$q2"),
    ]}}}}}
    assert [(e[0], e[3]) for e in inbox_entries(body, BOT, first_sync=True)] == [
        ("$q1", True), ("$a1", True), ("$q2", False),
    ]
    assert [e[3] for e in inbox_entries(body, BOT, first_sync=False)] == [False, False, False]


# -- rebuilding from room state -----------------------------------------------


def _state(event_type, content, sender=BOT, state_key=""):
    raw = {"event_id": f"${event_type}{sender}", "sender": sender, "type": event_type, "state_key": state_key, "content": content, "origin_server_ts": 1}
    (event,) = parse_events("!r:x", [raw])
    assert isinstance(event, OtherEvent)
    return event


def _binding(owner="@alice:x", agent_id="agent-0", chat_id=7, **extra):
    return {"owner": owner, "agent_id": agent_id, "chat_id": chat_id, "name": "Chat 1", "space_id": "!s:x", **extra}


def test_a_binding_the_bot_wrote_is_restored():
    found = trusted_state("!r:x", (_state(BINDING_STATE, _binding()),), BOTS, {})
    assert found.binding == RoomBinding("!r:x", "@alice:x", "agent-0", 7, "Chat 1", "!s:x", False)
    assert found.chat_ids_seen == [7] and found.ignored == []


def test_a_binding_or_space_written_by_anyone_else_is_ignored():
    forged = (
        _state(BINDING_STATE, _binding(owner="@bob:x", agent_id="agent-1"), sender="@alice:x"),
        _state(SPACE_STATE, {"owner": "@bob:x"}, sender="@alice:x"),
    )
    found = trusted_state("!r:x", forged, BOTS, {})
    assert found.binding is None and found.space_owner is None
    # Not even the forged chat id may move the bot's sequence.
    assert found.chat_ids_seen == []
    assert len(found.ignored) == 2 and all("not by the bot" in p for p in found.ignored)


def test_a_binding_whose_owner_moved_to_another_agent_is_not_restored_but_its_id_stays_used():
    found = trusted_state("!r:x", (_state(BINDING_STATE, _binding(owner="@bob:x", chat_id=9)),), BOTS, {})
    assert found.binding is None
    assert found.chat_ids_seen == [9]
    assert "served by agent-1, not agent-0" in found.ignored[0]
    gone = trusted_state("!r:x", (_state(BINDING_STATE, _binding(owner="@mallory:x")),), BOTS, {})
    assert gone.binding is None and "served by nobody" in gone.ignored[0]


def test_chat_ids_must_be_positive_integers_not_used_by_another_room():
    for bad in (-3, 0, True, "7", 7.0, 2**60):
        found = trusted_state("!r:x", (_state(BINDING_STATE, _binding(chat_id=bad)),), BOTS, {})
        assert found.binding is None and found.chat_ids_seen == [], bad
    taken = trusted_state("!r:x", (_state(BINDING_STATE, _binding(chat_id=7)),), BOTS, {7: "!other:x"})
    assert taken.binding is None and "already another room's" in taken.ignored[0]
    # Its own id, stored by a rebuild that a crash cut short, is no conflict.
    again = trusted_state("!r:x", (_state(BINDING_STATE, _binding(chat_id=7)),), BOTS, {7: "!r:x"})
    assert again.binding is not None


def test_a_space_marker_is_believed_only_from_the_bot_for_a_served_user():
    assert trusted_state("!r:x", (_state(SPACE_STATE, {"owner": "@alice:x"}),), BOTS, {}).space_owner == "@alice:x"
    unserved = trusted_state("!r:x", (_state(SPACE_STATE, {"owner": "@mallory:x"}),), BOTS, {})
    assert unserved.space_owner is None and unserved.ignored
    # A state key other than "" is not ours.
    assert trusted_state("!r:x", (_state(SPACE_STATE, {"owner": "@alice:x"}, state_key="x"),), BOTS, {}).space_owner is None


# -- the chat-id high-water mark ----------------------------------------------


def test_a_fresh_bot_reserves_a_first_block():
    assert plan_chat_ids(0, 0, 0) == (0, CHAT_ID_BLOCK)


def test_an_intact_database_neither_restarts_nor_writes_while_the_block_lasts():
    assert plan_chat_ids(10, 100, 100) == (0, None)
    assert plan_chat_ids(10, 100, None) == (0, None)


def test_a_lost_database_restarts_above_the_remote_mark_and_reserves_past_it():
    restart, reserve = plan_chat_ids(3, 0, 200)
    assert restart == 200 and reserve == 200 + CHAT_ID_BLOCK


def test_a_new_block_is_reserved_when_less_than_half_remains():
    assert plan_chat_ids(49, 100, None) == (0, None)
    assert plan_chat_ids(51, 100, None) == (0, 51 + CHAT_ID_BLOCK)
    # Ids handed out past the mark (a burst between two syncs) move it past them.
    assert plan_chat_ids(130, 100, None) == (0, 130 + CHAT_ID_BLOCK)


def test_a_mark_the_homeserver_lost_is_written_again():
    assert plan_chat_ids(10, 100, 0) == (0, 100)
