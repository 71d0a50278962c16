"""End to end: the homeserver goes away for 20 s while two answers stream (issue 9's third fault).

Both answers are posted whole when it is back, and nothing is charged to the
agent: no connection crash, no park, no error blaming it. The bot runs in
this process on a Synapse of this test's own, which is stopped and started
again. No test asserts how fast anything is.
"""

from __future__ import annotations

import trio

from harness.chat import onboard, running_bot

#: How long the homeserver stays away (the issue's figure; plus its start-up).
OUTAGE_SECONDS = 20.0


async def test_a_homeserver_outage_mid_answer_ends_with_the_whole_answers_and_nothing_charged_to_the_agent(tmp_path):
    # A Synapse of this test's own: it is stopped and started again.
    async with running_bot(tmp_path, None, users=("alice",)) as stack:
        alice = await stack.scripted_user("alice")
        dm, chat1 = await onboard(stack, alice)
        agent = stack.agents[0]
        agent.chunks, agent.slow_interval = 8, 0.5
        sent = [await alice.say(room, f"a long answer in {name} [[slow]]") for room, name in ((dm, "dm"), (chat1, "chat"))]
        # The homeserver goes away once both answers are visibly on their way.
        await alice.wait_until(lambda: all(alice.answer_so_far(e).parts for e in sent))
        await stack.stop_homeserver()
        # The outage itself (the fault's length, not a wait for anything).
        await trio.sleep(OUTAGE_SECONDS)
        await stack.restart_homeserver()
        for event_id, name in zip(sent, ("dm", "chat")):
            answer = await alice.answer(event_id, timeout=120)
            assert answer.text.startswith(f"echo: a long answer in {name}"), answer
            assert answer.errors == [] and "⚠" not in answer.text, answer
            assert len(answer.parts) == 1, answer
        # Nothing was charged to the agent: no connection crashed, nothing parked.
        registry = stack.supervisor.registry
        assert registry.supervisor("node/agents/agent-0").statistics().restarts == 0
        agents = registry.supervisor("node/agents").statistics()
        assert (agents.restarts, agents.parked) == (0, 0)
        # And it goes on as before.
        assert "echo: after the outage" in (await alice.answer(await alice.say(chat1, "after the outage"))).text
