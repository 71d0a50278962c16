"""End to end: onboarding, answers, streaming and commands, with the real bot,
a real Synapse and real fake agents."""

from harness.chat import chat_ids, onboard

from lambda_actors.bot.commands import HELP_TEXT


async def test_invite_onboards_user_and_a_message_is_answered_by_their_agent(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    dm, chat1 = await onboard(bot_stack, alice)
    space = next(i for i in alice.invites if i.is_space)
    assert space.name.startswith("Lambda — alice")
    event_id = await alice.say(chat1, "hello agent")
    answer = await alice.answer(event_id)
    assert "echo: hello agent" in answer.text
    assert bot_stack.agents[0].received_messages() == ["hello agent"]
    assert bot_stack.agents[1].received_messages() == []


async def test_the_direct_chat_is_a_conversation_of_its_own(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    dm, chat1 = await onboard(bot_stack, alice)
    first = await alice.answer(await alice.say(chat1, "in chat 1"))
    second = await alice.answer(await alice.say(dm, "in the dm"))
    assert "echo: in chat 1" in first.text and "echo: in the dm" in second.text
    assert len(chat_ids(bot_stack.agents[0])) == 2


async def test_a_slow_answer_streams_as_edits_of_one_message(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    bot_stack.agents[0].chunks = 8
    event_id = await alice.say(chat1, "tell me a long story [[slow]]")
    answer = await alice.answer(event_id)
    assert answer.text.startswith("echo: tell me a long story")
    assert len(answer.parts) == 1  # one message ...
    assert answer.edits >= 2  # ... that grew by edits while the agent wrote


async def test_messages_in_one_room_are_answered_in_order(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    ids = [await alice.say(chat1, f"message {n} [[slow]]") for n in range(3)]
    for n, event_id in enumerate(ids):
        assert f"echo: message {n}" in (await alice.answer(event_id)).text
    assert bot_stack.agents[0].received_messages() == ["message 0 [[slow]]", "message 1 [[slow]]", "message 2 [[slow]]"]


async def test_help_and_unknown_commands_are_answered_without_the_agent(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert (await alice.answer(await alice.say(chat1, "!help"))).text == HELP_TEXT
    unknown = await alice.answer(await alice.say(chat1, "!frobnicate"))
    assert "Unknown command !frobnicate" in unknown.text
    usage = await alice.answer(await alice.say(chat1, "!rename"))
    assert "Usage: !rename <name>" in usage.text
    assert bot_stack.agents[0].received_messages() == []


async def test_new_chats_rename_archive_and_context(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    created = await alice.answer(await alice.say(chat1, "!new Research"))
    assert 'Created "Research"' in created.text
    research = await alice.accept_invite("Research")
    await alice.notice(research, 'This is "Research"')
    assert "Renamed this chat" in (await alice.answer(await alice.say(research, "!rename Deep research"))).text
    chats = await alice.answer(await alice.say(chat1, "!chats"))
    assert "Chat 1 ← here" in chats.text and "Deep research" in chats.text
    context = await alice.answer(await alice.say(research, "!context"))
    assert "Agent: Agent 0 (agent-0)" in context.text and "Chat id:" in context.text
    assert "archived" in (await alice.answer(await alice.say(research, "!archive"))).text
    refused = await alice.answer(await alice.say(research, "still there?"))
    assert "archived" in refused.text
    assert bot_stack.agents[0].received_messages() == []


async def test_clear_gives_the_room_a_fresh_agent_context(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(chat1, "before"))
    cleared = await alice.answer(await alice.say(chat1, "!reset"))
    assert "Started over" in cleared.text
    await alice.answer(await alice.say(chat1, "after"))
    before, after = chat_ids(bot_stack.agents[0])
    assert before != after
    assert bot_stack.agents[0].received_messages(before) == ["before"]
    assert bot_stack.agents[0].received_messages(after) == ["after"]


async def test_each_user_reaches_only_their_own_agent(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    bob = await bot_stack.scripted_user("bob")
    _, alice_chat = await onboard(bot_stack, alice)
    _, bob_chat = await onboard(bot_stack, bob)
    await alice.answer(await alice.say(alice_chat, "from alice"))
    await bob.answer(await bob.say(bob_chat, "from bob"))
    assert bot_stack.agents[0].received_messages() == ["from alice"]
    assert bot_stack.agents[1].received_messages() == ["from bob"]


async def test_typing_shows_while_a_slow_answer_is_written_and_not_for_a_quick_one(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(chat1, "quick"))
    bot_stack.agents[0].chunks, bot_stack.agents[0].slow_interval = 4, 0.6
    await alice.answer(await alice.say(chat1, "slow one [[slow]]"))

    def bot_typing() -> list[bool]:
        return [bot_stack.bot_id in users for room, users in alice.typing if room == chat1]

    # It stops typing once the answer is written ...
    await alice.wait_until(lambda: bot_typing() and not bot_typing()[-1])
    # ... and it started typing once: for the slow answer, not the quick one.
    states = bot_typing()
    starts = sum(1 for before, now in zip([False, *states], states) if now and not before)
    assert starts == 1
