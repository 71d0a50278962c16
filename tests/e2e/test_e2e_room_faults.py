"""End to end: the room's faults with a real Synapse and real fake agents:
a poison message is set aside and the room goes on; a room whose agent was
retired answers through the owner's new agent; a room the bot created just
before a crash is found by its marker, not made twice; malformed media is a
notice, never a crash."""

from __future__ import annotations

import pytest
from harness.bot import TEST_SUPERVISION, TEST_TIMING
from harness.chat import onboard

from lambda_actors.bot import room_rules
from lambda_actors.bot.actors.services import ERROR_KEY, POISON_MARK, SPACE_STATE
from lambda_actors.loopback.stack import agents_yaml, open_loopback_stack
from lambda_actors.matrix import MatrixClient
from lambda_actors.runtime.supervision_config import parse_supervision_config

@pytest.fixture
async def poison_stack(synapse, tmp_path):
    # The loopback policy parks a room that keeps crashing (as the shipped one does).
    supervision = parse_supervision_config(TEST_SUPERVISION, "test supervision.toml")
    async with open_loopback_stack(
        tmp_path, users=("alice", "bob"), homeserver=synapse, timing=TEST_TIMING, supervision=supervision
    ) as stack:
        await stack.start_bot(faults={"poison"})
        yield stack


async def test_a_message_that_crashes_its_room_is_set_aside_with_a_notice_and_the_room_goes_on(poison_stack):
    alice = await poison_stack.scripted_user("alice")
    _, chat1 = await onboard(poison_stack, alice)
    poisoned = await alice.answer(await alice.say(chat1, f"please {POISON_MARK} crash"))
    assert "could not be handled and was set aside; the operator has the details" in poisoned.text
    assert poisoned.errors == ["set_aside"]
    after = await alice.answer(await alice.say(chat1, "and now?"))
    assert "echo: and now?" in after.text
    assert poison_stack.agents[0].received_messages() == ["and now?"]
    # Another user's room never noticed.
    bob = await poison_stack.scripted_user("bob")
    _, bob_chat = await onboard(poison_stack, bob)
    assert "echo: hi" in (await bob.answer(await bob.say(bob_chat, "hi"))).text


async def test_a_room_whose_agent_was_retired_answers_through_the_owners_new_agent(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert "echo: before" in (await alice.answer(await alice.say(chat1, "before"))).text
    # The operator retires agent-0; alice is now served by agent-1.
    await bot_stack.stop_bot()
    users = {u.user_id: "agent-1" for u in bot_stack.users.values()}
    bot_stack.config_path.write_text(agents_yaml(bot_stack.agents, users, removed=[0]))
    await bot_stack.start_bot()
    answer = await alice.answer(await alice.say(chat1, "still there?"))
    assert "no longer configured" in answer.text and "Agent 1" in answer.text
    assert "echo: still there?" in answer.text
    assert answer.errors == ["agent_removed"]
    assert bot_stack.agents[1].received_messages() == ["still there?"]
    # The next message goes straight to agent-1, with no second notice.
    again = await alice.answer(await alice.say(chat1, "and again"))
    assert again.errors == [] and "echo: and again" in again.text


async def test_rooms_created_before_a_crash_are_found_by_their_marker_not_made_again(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    # As if the bot had created alice's Space and first chat and crashed
    # before recording them: the rooms exist, with their markers, unknown to the store.
    bot = MatrixClient(bot_stack.homeserver.url, access_token=bot_stack.bot_user.access_token, user_id=bot_stack.bot_id)
    space = await bot.create_room(
        name=room_rules.space_name(alice.user_id),
        invite=[alice.user_id],
        space=True,
        initial_state=[
            room_rules.creation_state(room_rules.creation_marker("space", alice.user_id)),
            {"type": SPACE_STATE, "state_key": "", "content": {"owner": alice.user_id}},
        ],
    )
    chat = await bot.create_room(
        name="Chat 1",
        invite=[alice.user_id],
        initial_state=[room_rules.creation_state(room_rules.creation_marker("first-chat", alice.user_id))],
    )
    await bot.aclose()
    dm, chat1 = await onboard(bot_stack, alice)
    assert chat1 == chat
    assert [i.room_id for i in alice.invites if i.is_space] == [space]
    assert [i.room_id for i in alice.invites if i.name == "Chat 1"] == [chat]
    assert "echo: found" in (await alice.answer(await alice.say(chat1, "found"))).text
    # A chat made by !new carries the marker of the command that made it.
    command = await alice.say(chat1, "!new Marked")
    await alice.answer(command)
    marked = await alice.accept_invite("Marked")
    state = await alice.client.get_state(marked, room_rules.CREATED_STATE)
    assert state == {"marker": room_rules.creation_marker("chat", command)}


@pytest.mark.parametrize("url", ["mxc://localhost", "mxc:///abc", "mxc://localhost/no-such-media"])
async def test_a_file_with_malformed_or_missing_media_is_a_notice_not_a_crash(bot_stack, url):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    content = {"msgtype": "m.file", "body": "broken.bin", "filename": "broken.bin", "url": url}
    refused = await alice.answer(await alice.client.send(chat1, "m.room.message", content, f"broken-{url}"))
    assert "could not take 'broken.bin'" in refused.text and refused.errors == ["file"]
    assert "echo: after" in (await alice.answer(await alice.say(chat1, "after"))).text
