"""End to end: the three everyday faults of issue 9, each reproduced and shown fixed.

Real Synapse, real fake agents, the real bot (in this process, with the
loopback profile). Each test is the operator's story of one fault:

1. an agent is removed from agents.yaml between two bot runs, and the user
   of a room bound to it writes: the room answers (with the agent the user
   now maps to, saying so);
2. one room crashes on every poisoned message (the bot's ``poison`` fault
   hook): the first is set aside with a notice, the second gets the room
   parked, and the parked room is flooded with 1,000 messages: another user
   keeps getting answers all along;
3. the homeserver goes away while answers stream: ``test_e2e_outage.py``
   (a Synapse of its own, so it runs beside this file in another worker).

No test asserts how fast anything is; a timeout only bounds how long a
broken bot can keep the suite waiting.
"""

from __future__ import annotations

from dataclasses import replace

import trio

from harness.chat import onboard, running_bot

from lambda_actors.bot.actors.services import (
    ERROR_AGENT_REMOVED,
    ERROR_KEY,
    ERROR_SET_ASIDE,
    FAULT_POISON,
    POISON_MARK,
)
from lambda_actors.loopback.profiles import LOOPBACK
from lambda_actors.loopback.stack import agents_yaml
from lambda_actors.runtime.state import Status

#: Messages flooded into the parked room (the issue's figure).
FLOOD = 1_000
#: Senders of the flood at once (one user; Synapse orders them per room anyway).
FLOOD_SENDERS = 16


async def test_a_room_bound_to_an_agent_removed_between_two_runs_answers_with_the_owners_new_agent(synapse, tmp_path):
    async with running_bot(tmp_path, synapse) as stack:
        alice = await stack.scripted_user("alice")
        _, chat1 = await onboard(stack, alice)
        assert "echo: before" in (await alice.answer(await alice.say(chat1, "before"))).text
        # The operator retires agent-0: alice now maps to agent-1.
        await stack.stop_bot()
        alice_id = stack.users["alice"].user_id
        stack.config_path.write_text(
            agents_yaml(stack.agents, {alice_id: "agent-1", stack.users["bob"].user_id: "agent-1"}, removed=[0])
        )
        await stack.start_bot()
        answer = await alice.answer(await alice.say(chat1, "after"), timeout=30)
        assert "echo: after" in answer.text, answer
        # She is told what happened, once, as a notice carrying its kind.
        removed = [s for s in alice.messages_from(stack.bot_id, chat1) if s.content.get(ERROR_KEY) == ERROR_AGENT_REMOVED]
        assert len(removed) == 1, [s.content for s in alice.messages_from(stack.bot_id, chat1)]
        # Her new agent got the message, in a context of its own; the old one got nothing more.
        assert stack.agents[1].received_messages() == ["after"]
        assert stack.agents[0].received_messages() == ["before"]
        later = await alice.answer(await alice.say(chat1, "and again"))
        assert "echo: and again" in later.text
        assert len([s for s in alice.messages_from(stack.bot_id, chat1) if s.content.get(ERROR_KEY) == ERROR_AGENT_REMOVED]) == 1


async def test_another_user_keeps_getting_answers_while_a_room_is_parked_and_flooded(synapse, tmp_path):
    # A room that stays parked for the whole test: while it is parked, the
    # flood only piles up (nothing of it is handled), which is the moment a
    # blocking wake used to stop every room.
    profile = replace(LOOPBACK, room_cool_down=600.0)
    async with running_bot(tmp_path, synapse, faults={FAULT_POISON}, profile=profile) as stack:
        alice = await stack.scripted_user("alice")
        bob = await stack.scripted_user("bob")
        (_, alice_chat), (_, bob_chat) = await onboard(stack, alice), await onboard(stack, bob)
        assert "echo: warm" in (await bob.answer(await bob.say(bob_chat, "warm"))).text
        # Two poisoned messages crash alice's room three times each: the
        # first is set aside (with a notice to her), and the second's crashes
        # exceed the room's intensity, so the room is parked.
        poisoned = [await alice.say(alice_chat, f"bad {n} {POISON_MARK}") for n in range(2)]
        rooms = stack.supervisor.registry.supervisor("node/rooms")
        await alice.wait_until(lambda: rooms.child_state(alice_chat).status is Status.PARKED, timeout=60)
        set_aside = await alice.answer(poisoned[0], timeout=30)
        assert set_aside.errors == [ERROR_SET_ASIDE], set_aside
        # Bob writes all along while the parked room is flooded.
        flood: list[str] = []
        bob_answers: list[str] = []

        async def flooder(first: int) -> None:
            for n in range(first, FLOOD, FLOOD_SENDERS):
                flood.append(await alice.say(alice_chat, f"flood {n}"))

        async def bob_writes() -> None:
            n = 0
            while len(flood) < FLOOD or n < 3:
                answer = await bob.answer(await bob.say(bob_chat, f"still here {n}"), timeout=30)
                assert f"echo: still here {n}" in answer.text, answer
                bob_answers.append(answer.text)
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bob_writes)
            for first in range(FLOOD_SENDERS):
                nursery.start_soon(flooder, first)
        assert len(flood) == FLOOD and len(bob_answers) >= 3
        # The room was parked and flooded the whole time, and nothing of it reached an agent.
        assert rooms.child_state(alice_chat).status is Status.PARKED
        assert stack.agents[0].received_messages() == []
