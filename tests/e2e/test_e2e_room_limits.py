"""End to end: the room's limits from agents.yaml's ``limits:`` section, with a real
Synapse: chats a user may have created per hour, bytes staged per room, and
``!remove`` deleting the file from the agent's workspace."""

from __future__ import annotations

from harness.chat import onboard


async def restart_with_limits(stack, limits: str) -> None:
    await stack.stop_bot()
    stack.config_path.write_text(stack.config_path.read_text() + f"limits:\n{limits}")
    await stack.start_bot()


async def test_new_past_the_hourly_room_limit_says_when_to_try_again(bot_stack):
    await restart_with_limits(bot_stack, "  rooms_per_user_per_hour: 2\n")
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)  # Chat 1 is the first room made for alice
    created = await alice.answer(await alice.say(chat1, "!new Second"))
    assert 'Created "Second"' in created.text
    refused = await alice.answer(await alice.say(chat1, "!new Third"))
    assert refused.errors == ["limit"] and "2 an hour" in refused.text and "create the next one at" in refused.text
    assert [i.name for i in alice.invites if not i.is_space].count("Third") == 0


async def test_files_past_the_rooms_staged_bytes_are_refused_and_remove_deletes_them(bot_stack):
    await restart_with_limits(bot_stack, "  staged_bytes_per_room: 10\n")
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert "a.txt is ready" in (await alice.answer(await alice.send_file(chat1, "a.txt", b"12345678"))).text
    refused = await alice.answer(await alice.send_file(chat1, "b.txt", b"12345678"))
    assert refused.errors == ["limit"] and "could not take 'b.txt'" in refused.text
    incoming = bot_stack.agents[0].workspace / "incoming"
    assert [p.name.endswith("-a.txt") for p in incoming.iterdir()] == [True]
    assert "Removed 1 waiting file" in (await alice.answer(await alice.say(chat1, "!remove all"))).text
    assert list(incoming.iterdir()) == []
    # With the room's budget free again, the file is taken.
    assert "b.txt is ready" in (await alice.answer(await alice.send_file(chat1, "b.txt", b"12345678"))).text
