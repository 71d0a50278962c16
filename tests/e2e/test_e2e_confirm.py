"""End to end: the agent asks, the owner answers (!yes / !no / a reaction)."""

from harness.chat import onboard


async def test_yes_approves_the_agents_request(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "delete it [[confirm]]")
    await alice.notice(chat1, "asks for your permission")
    context = await alice.answer(await alice.say(chat1, "!context"))
    assert "Waiting for your answer: nothing" not in context.text
    await alice.say(chat1, "!yes")
    answer = await alice.answer(event_id)
    assert "approved" in answer.text


async def test_no_refuses_the_agents_request(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "delete it [[confirm]]")
    await alice.notice(chat1, "asks for your permission")
    await alice.say(chat1, "!no")
    assert "denied" in (await alice.answer(event_id)).text


async def test_a_reaction_on_the_question_answers_it(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "deploy [[confirm]]")
    question = await alice.notice(chat1, "asks for your permission")
    await alice.react(chat1, question.event_id, "✅")
    assert "approved" in (await alice.answer(event_id)).text


async def test_yes_with_nothing_pending_says_so(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert "Nothing is waiting" in (await alice.answer(await alice.say(chat1, "!yes"))).text
