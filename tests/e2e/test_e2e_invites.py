"""End to end: who may invite the bot, and what happens to everyone else."""

from harness.chat import onboard

from lambda_actors.bot.actors.services import ERROR_KEY
from lambda_actors.loopback.homeserver import register_user
from lambda_actors.loopback.user import ScriptedUser


async def stranger(bot_stack) -> ScriptedUser:
    """A user on the homeserver whom agents.yaml does not know (the stack
    syncs it, and stops its sync before closing its client)."""
    registered = register_user(bot_stack.homeserver.url, bot_stack.homeserver.registration_shared_secret, "stranger-" + bot_stack.bot_id[8:14], "pw-stranger-123")
    bot_stack.users["stranger"] = registered
    return await bot_stack.scripted_user("stranger")


async def test_an_unknown_user_is_refused_politely_and_the_bot_leaves(bot_stack):
    user = await stranger(bot_stack)
    dm = await user.start_dm(bot_stack.bot_id)
    refusal = await user.notice(dm, "Sorry, I only work for")
    assert refusal.sender == bot_stack.bot_id
    await user.wait_until(
        lambda: any(
            s.type == "m.room.member" and s.event.get("state_key") == bot_stack.bot_id and s.content.get("membership") == "leave"
            for s in user.seen
        )
    )
    # Nothing reached any agent, and no Space was made for them.
    assert all(agent.received_messages() == [] for agent in bot_stack.agents)
    assert user.invites == []


async def test_a_group_room_invite_from_an_unknown_user_is_declined(bot_stack):
    user = await stranger(bot_stack)
    alice = await bot_stack.scripted_user("alice")
    room = await user.client.create_room(name="Team room", invite=[alice.user_id, bot_stack.bot_id])
    await alice.client.join(room)
    await user.wait_until(
        lambda: any(
            s.room_id == room
            and s.type == "m.room.member"
            and s.event.get("state_key") == bot_stack.bot_id
            and s.content.get("membership") == "leave"
            for s in user.seen
        )
    )
    assert not [s for s in user.seen if s.room_id == room and s.sender == bot_stack.bot_id and s.type == "m.room.message"]


async def test_a_repeated_invite_does_not_create_a_second_space_or_chat(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    dm, chat1 = await onboard(bot_stack, alice)
    second_dm = await alice.start_dm(bot_stack.bot_id)
    await alice.notice(second_dm, "Hello! I connect you to")
    chats = await alice.answer(await alice.say(chat1, "!chats"))
    assert chats.text.count("Chat 1") == 1
    assert sum(1 for i in alice.invites if i.is_space) == 1
    assert sum(1 for i in alice.invites if i.name == "Chat 1") == 1


async def test_an_encrypted_room_gets_a_notice_instead_of_silence(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    room = await alice.client.create_room(invite=[bot_stack.bot_id], is_direct=True, initial_state=[encryption])
    warning = await alice.notice(room, "end-to-end encrypted")
    # It names where to talk instead: the Space and the chat made for alice.
    assert "“Chat 1” in your Space “Lambda — alice" in warning.content["body"]
    assert warning.content[ERROR_KEY] == "encrypted"
    # Onboarding still made the Space and Chat 1 (unencrypted) to talk in.
    chat1 = await alice.accept_invite("Chat 1")
    assert "echo: here then" in (await alice.answer(await alice.say(chat1, "here then"))).text
