"""End to end: stopping the bot in the middle of an answer (issue 12).

A clean stop (what SIGTERM does) tells the user their answer was interrupted,
never that the agent could not answer, and logs no exception group.
"""

from harness.chat import onboard

from lambda_actors.bot.streaming import INTERRUPTED


async def test_a_clean_stop_mid_answer_says_interrupted_and_never_blames_the_agent(bot_stack, capfd):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    # The agent waits for a confirmation, so the answer is open for as long as we like.
    event_id = await alice.say(chat1, "tidy up [[confirm]]")
    await alice.notice(chat1, "asks for your approval")
    capfd.readouterr()
    await bot_stack.stop_bot()
    out, err = capfd.readouterr()
    assert "ExceptionGroup" not in out + err and "EndOfChannel" not in out + err
    # Whatever the stop could post before the outbox stopped, the rest is in
    # the store and goes out when the bot is back.
    await bot_stack.start_bot()
    answer = await alice.answer(event_id, timeout=60)
    assert answer.done
    assert INTERRUPTED in answer.text and "could not answer" not in answer.text
    assert "interrupted" in answer.errors and "agent_failed" not in answer.errors
    # And the chat goes on.
    assert "echo: hello again" in (await alice.answer(await alice.say(chat1, "hello again"))).text
