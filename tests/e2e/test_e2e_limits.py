"""End to end: big messages, a flooding user, and people who do not own the room."""

import trio
from harness.chat import onboard

from lambda_actors.bot.streaming import PART_BYTES

#: Slow messages of the flooding user: her room answers one at a time (about
#: 0.6 s each), so the last starts seconds after the other user asked.
FLOOD = 10


async def test_the_largest_message_matrix_allows_is_delivered_and_answered_in_parts(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    text = "x" * 60_000  # Synapse refuses events over 64 KiB in all
    answer = await alice.answer(await alice.say(chat1, text))
    assert bot_stack.agents[0].received_messages() == [text]
    # The echo is longer than one message may be (an edit carries its body
    # twice, so a part holds at most PART_BYTES), so it continues in more.
    assert answer.done and len(answer.parts) == -(-len("echo: " + text) // (PART_BYTES - 512))
    assert "".join(answer.parts.values()) == "echo: " + text


async def test_a_flooding_user_does_not_hold_up_another_user(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    carol = await bot_stack.scripted_user("carol")  # same agent as alice
    _, alice_chat = await onboard(bot_stack, alice)
    _, carol_chat = await onboard(bot_stack, carol)
    flood = [await alice.say(alice_chat, f"flood {n} [[slow]]") for n in range(FLOOD)]
    question = await carol.say(carol_chat, "my turn?")
    carol_answer_at = None
    async with trio.open_nursery() as nursery:

        async def carol_waits() -> None:
            nonlocal carol_answer_at
            await carol.answer(question, timeout=60)
            carol_answer_at = len(alice.answer_so_far(flood[-1]).parts)

        nursery.start_soon(carol_waits)
        for event_id in flood:
            await alice.answer(event_id, timeout=120)
    # Carol was answered while Alice's flood was still being worked through.
    assert carol_answer_at == 0
    assert bot_stack.agents[0].received_messages()[-1] == f"flood {FLOOD - 1} [[slow]]"


async def test_only_the_rooms_owner_reaches_the_agent(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    bob = await bot_stack.scripted_user("bob")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.client.invite(chat1, bob.user_id)
    await bob.client.join(chat1)
    await bob.say(chat1, "let me in [[confirm]]")
    later = await alice.answer(await alice.say(chat1, "only me"))
    assert "echo: only me" in later.text
    assert bot_stack.agents[0].received_messages() == ["only me"]
    assert bot_stack.agents[1].received_messages() == []
