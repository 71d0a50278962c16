"""End to end: a scripted user, the real bot, a real Synapse, real fake agents."""

from lambda_actors.bot.commands import HELP_TEXT


async def onboard(stack, user):
    """Invite the bot to a DM; return (dm_room, chat1_room) once both are greeted."""
    dm = await user.start_dm(stack.bot_id)
    await user.notice(dm, "Hello! I connect you to")
    chat1 = await user.accept_invite("Chat 1")
    await user.notice(chat1, 'This is "Chat 1"')
    return dm, chat1


async def test_invite_onboards_user_and_a_message_is_answered_by_their_agent(bot_stack):
    alice = await bot_stack.user("alice")
    dm, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "hello agent")
    answer = await alice.answer(event_id)
    assert "echo: hello agent" in answer.text
    assert bot_stack.agents[0].received_messages() == ["hello agent"]
    assert bot_stack.agents[1].received_messages() == []
