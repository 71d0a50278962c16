"""End to end: agents that misbehave (SPEC section 4) and what the user sees."""

from harness.chat import onboard

from lambda_actors.runtime.state import Status


async def test_an_agent_that_drops_mid_answer_gives_a_clear_error_and_the_next_message_works(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    failed = await alice.answer(await alice.say(chat1, "first [[drop]]"))
    assert "could not answer: it closed the connection in the middle of the answer" in failed.text
    assert "send your message again" in failed.text
    # What the user reads is for users: no exception reprs, no internal URLs.
    assert "ExceptionGroup" not in failed.text and "ws://" not in failed.text
    answer = await alice.answer(await alice.say(chat1, "second"))
    assert "echo: second" in answer.text


async def test_an_agent_that_never_sends_status_is_reported(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    bot_stack.agents[0].misbehave("no-status", times=1)
    failed = await alice.answer(await alice.say(chat1, "anyone there?"))
    assert "it did not get ready in time" in failed.text
    assert bot_stack.agents[0].received_messages() == []
    assert "echo: again" in (await alice.answer(await alice.say(chat1, "again"))).text


async def test_an_agent_that_stalls_mid_answer_is_reported(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    failed = await alice.answer(await alice.say(chat1, "think hard [[stall]]"))
    assert "it stopped responding in the middle of the answer" in failed.text


async def test_an_agent_error_frame_is_shown(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    answer = await alice.answer(await alice.say(chat1, "oops [[error]]"))
    assert "reported an error" in answer.text


async def test_quirky_frames_do_not_break_the_answer(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    for token in ("unknown", "double-end", "after-end", "tool", "progress", "lost-chunk"):
        answer = await alice.answer(await alice.say(chat1, f"quirk [[{token}]]"))
        assert "quirk" in answer.text, token
    garbled = await alice.answer(await alice.say(chat1, "quirk [[garbage]]"))
    assert "unreadable frame" in garbled.text
    # After all of that, one connection served every message.
    assert bot_stack.agents[0].connections["1"] == 1


async def test_an_oversized_frame_fails_only_that_answer(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    failed = await alice.answer(await alice.say(chat1, "huge [[big]]"))
    assert "could not answer: it sent a message too large to handle" in failed.text
    assert "echo: small" in (await alice.answer(await alice.say(chat1, "small"))).text


async def test_a_failing_agent_is_parked_and_other_agents_keep_answering(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    bob = await bot_stack.scripted_user("bob")
    _, alice_chat = await onboard(bot_stack, alice)
    _, bob_chat = await onboard(bot_stack, bob)
    bot_stack.agents[0].misbehave("crash")
    agents = bot_stack.supervisor.registry.supervisor("node/agents")
    # Test policy: two crashes of agent-0's connections within a minute park it.
    for n in range(2):
        await alice.answer(await alice.say(alice_chat, f"attempt {n}"))
    await alice.wait_until(lambda: agents.child_state("agent-0").status is Status.PARKED)
    unavailable = await alice.answer(await alice.say(alice_chat, "are you back?"))
    assert "Agent 0 is unavailable" in unavailable.text and "next try at" in unavailable.text
    assert "echo: still fine" in (await bob.answer(await bob.say(bob_chat, "still fine"))).text
    assert agents.child_state("agent-1").status is Status.RUNNING
