"""End to end: the bot dies (SIGKILL) or loses its database, and nothing is lost or doubled."""

import shutil
from dataclasses import replace

import pytest

from harness.bot import TEST_SUPERVISION
from harness.chat import chat_ids, onboard


@pytest.mark.parametrize("interval_after_restart", [0.5, 0.0], ids=["slow-again", "quick-after-restart"])
async def test_a_bot_killed_mid_answer_answers_exactly_once_after_restart(bot_stack, tmp_path, interval_after_restart):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    # The same bot, now as a real process that can be SIGKILLed.
    await bot_stack.stop_bot()
    supervision = tmp_path / "supervision.toml"
    supervision.write_text(TEST_SUPERVISION)
    bot_stack.start_bot_process(supervision, tmp_path / "bot.log")
    agent = bot_stack.agents[0]
    agent.chunks, agent.slow_interval = 6, 0.5
    event_id = await alice.say(chat1, "a long answer please [[slow]]")
    # Kill the bot once the answer is visibly on its way.
    await alice.wait_until(lambda: alice.answer_so_far(event_id).parts)
    assert not alice.answer_so_far(event_id).done
    bot_stack.kill_bot_process()
    # Answered quickly the second time, the answer is one final post, which
    # must land on the message the first run already posted.
    agent.slow_interval = interval_after_restart
    bot_stack.start_bot_process(supervision, tmp_path / "bot.log")
    answer = await alice.answer(event_id, timeout=60)
    assert "echo: a long answer please" in answer.text
    assert len(answer.parts) == 1  # one message, never a second answer
    # The agent got the message once per run of the bot: a restart in between.
    assert agent.received_messages() == ["a long answer please [[slow]]"] * 2
    later = await alice.answer(await alice.say(chat1, "and now?"))
    assert "echo: and now?" in later.text
    assert await bot_stack.terminate_bot_process() == 0


async def test_a_lost_database_is_rebuilt_from_the_rooms_state(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    dm, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(chat1, "before"))
    [chat_before] = chat_ids(bot_stack.agents[0])
    await bot_stack.stop_bot()
    shutil.rmtree(bot_stack.data_dir)
    await bot_stack.start_bot()
    answer = await alice.answer(await alice.say(chat1, "after"))
    assert "echo: after" in answer.text
    # Same room, same agent context; nothing answered before was answered again.
    assert bot_stack.agents[0].received_messages(chat_before) == ["before", "after"]
    assert bot_stack.agents[0].received_messages() == ["before", "after"]
    # The direct chat (whose state we may not write) is adopted again on use.
    assert "echo: hi again" in (await alice.answer(await alice.say(dm, "hi again"))).text


async def test_messages_sent_while_the_bot_was_down_are_all_answered_even_past_one_sync(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await bot_stack.stop_bot()
    # One sync carries 3 events per room now, so 7 messages leave a gap that
    # the bot must fill from the room's history.
    bot_stack.timing = replace(bot_stack.timing, sync_timeline_limit=3)
    sent = [await alice.say(chat1, f"while down {n}") for n in range(7)]
    await bot_stack.start_bot()
    for n, event_id in enumerate(sent):
        assert f"echo: while down {n}" in (await alice.answer(event_id, timeout=60)).text
    assert bot_stack.agents[0].received_messages() == [f"while down {n}" for n in range(7)]
