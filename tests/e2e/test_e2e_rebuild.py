"""End to end: after the database is lost, the bot rebuilds from room state it
wrote itself, and no chat id is ever handed out twice."""

from __future__ import annotations

import shutil

from harness.chat import chat_ids, onboard
from lambda_actors.bot.actors.services import BINDING_STATE, SPACE_STATE
from lambda_actors.bot.actors.sync import CHAT_IDS_TYPE
from lambda_actors.bot.store import Store


def _stored_chat_ids(stack) -> dict[str, int]:
    """room id → chat id, read from the stopped bot's database."""
    store = Store.open(stack.data_dir / "bot.sqlite3")
    try:
        return {b.room_id: b.chat_id for b in store.bindings()}
    finally:
        store.close()


async def test_forged_binding_and_space_state_are_ignored_after_a_database_loss(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    bob = await bot_stack.scripted_user("bob")
    alice_dm, alice_chat = await onboard(bot_stack, alice)
    _, bob_chat = await onboard(bot_stack, bob)
    await bob.answer(await bob.say(bob_chat, "bob's secret plan"))
    [bob_context] = chat_ids(bot_stack.agents[1])
    # Alice controls her direct chat's state: she writes a binding that claims
    # it is Bob's chat with Bob's agent and context, and marks it as Bob's Space.
    forged = {"owner": bob.user_id, "agent_id": "agent-1", "chat_id": int(bob_context), "name": "Chat 1"}
    await alice.client.put_state(alice_dm, BINDING_STATE, forged)
    await alice.client.put_state(alice_dm, SPACE_STATE, {"owner": bob.user_id})
    await bot_stack.stop_bot()
    shutil.rmtree(bot_stack.data_dir)
    await bot_stack.start_bot()

    answer = await alice.answer(await alice.say(alice_dm, "who am I talking to?"))
    # Served as Alice's own direct chat, by her agent, in a context of its own.
    assert "echo: who am I talking to?" in answer.text
    assert "who am I talking to?" in bot_stack.agents[0].received_messages()
    assert bot_stack.agents[1].received_messages() == ["bob's secret plan"]
    assert bot_stack.agents[1].received_messages(bob_context) == ["bob's secret plan"]
    # Bob's real chat was restored from the bot's own state, same context.
    await bob.answer(await bob.say(bob_chat, "still mine"))
    assert bot_stack.agents[1].received_messages(bob_context) == ["bob's secret plan", "still mine"]
    # Bob's new chats go into his own Space, never into Alice's room.
    await bob.answer(await bob.say(bob_chat, "!new Later"))
    later = await bob.accept_invite("Later")
    await bob.notice(later, 'This is "Later"')
    await bot_stack.stop_bot()
    store = Store.open(bot_stack.data_dir / "bot.sqlite3")
    try:
        assert store.user_space(bob.user_id) not in (None, alice_dm)
        assert store.binding(alice_dm).owner == alice.user_id
        assert store.binding(alice_dm).chat_id != int(bob_context)
    finally:
        store.close()


async def test_after_a_database_loss_a_new_room_never_gets_a_chat_id_used_before(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    bob = await bot_stack.scripted_user("bob")
    alice_dm, alice_chat = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(alice_dm, "in the dm"))
    await alice.answer(await alice.say(alice_chat, "in chat 1"))
    await bot_stack.stop_bot()
    before = _stored_chat_ids(bot_stack)
    assert len(set(before.values())) == 2
    shutil.rmtree(bot_stack.data_dir)
    await bot_stack.start_bot()

    # The direct chat's binding could not be kept in its state (Alice's room):
    # it is adopted again, with a new id, not the one it had.
    await alice.answer(await alice.say(alice_dm, "the dm again"))
    # A new user's rooms, made after the loss.
    bob_dm, bob_chat = await onboard(bot_stack, bob)
    await bob.answer(await bob.say(bob_chat, "hello"))
    await bot_stack.stop_bot()
    after = _stored_chat_ids(bot_stack)
    assert after[alice_chat] == before[alice_chat]  # restored from state: same context
    new_ids = [after[alice_dm], after[bob_dm], after[bob_chat]]
    assert len(set(new_ids)) == 3
    assert not set(new_ids) & set(before.values()), (before, after)
    assert min(new_ids) > max(before.values())


async def test_account_data_round_trips_and_is_none_when_never_set(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    assert await alice.client.get_account_data(CHAT_IDS_TYPE) is None
    await alice.client.put_account_data(CHAT_IDS_TYPE, {"reserved": 300})
    assert await alice.client.get_account_data(CHAT_IDS_TYPE) == {"reserved": 300}
