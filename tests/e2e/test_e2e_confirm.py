"""End to end: the agent asks, the owner answers (!yes / !no / a reaction).

An agent's confirmation is a record of the node's approvals (SPEC 7.1, last
bullet): its prompt is the gate's prompt, edited once decided, and the
record is in the audit trail with ``source = "agent"``.
"""

import sqlite3

from harness.chat import onboard

from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.actors.node import DATABASE_FILE


def _records(bot_stack) -> list:
    store = ApprovalStore(sqlite3.connect(bot_stack.data_dir / DATABASE_FILE))
    try:
        return store.listing()
    finally:
        store.close()


def _edit_of(alice, event_id: str) -> str | None:
    for seen in alice.seen:
        relates = seen.content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace" and relates.get("event_id") == event_id:
            return str((seen.content.get("m.new_content") or {}).get("body"))
    return None


async def test_yes_approves_the_agents_request(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "delete it [[confirm]]")
    prompt = await alice.notice(chat1, "asks for your approval")
    context = await alice.answer(await alice.say(chat1, "!context"))
    assert "Waiting for your answer: delete_file" in context.text
    await alice.say(chat1, "!yes")
    answer = await alice.answer(event_id)
    assert "approved" in answer.text
    # The same record as an API request: in the audit trail, its prompt edited.
    (record,) = _records(bot_stack)
    assert (record.source, record.status, record.approver, record.agent_id, record.room_id, record.decided_via) == (
        "agent", "approved", alice.user_id, "agent-0", chat1, "command"
    )
    assert f"✅ Approved by {alice.user_id}" in await alice.wait_until(lambda: _edit_of(alice, prompt.event_id))


async def test_no_refuses_the_agents_request(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "delete it [[confirm]]")
    await alice.notice(chat1, "asks for your approval")
    await alice.say(chat1, "!no")
    assert "denied" in (await alice.answer(event_id)).text


async def test_a_reaction_on_the_question_answers_it(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    event_id = await alice.say(chat1, "deploy [[confirm]]")
    question = await alice.notice(chat1, "asks for your approval")
    await alice.react(chat1, question.event_id, "✅")
    assert "approved" in (await alice.answer(event_id)).text


async def test_yes_with_nothing_pending_says_so(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert "Nothing is waiting" in (await alice.answer(await alice.say(chat1, "!yes"))).text
