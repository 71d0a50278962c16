"""End to end: agent registration (SPEC 7.2) and a room made for an approver
who has none (SPEC 7.1), with a real Synapse, the node as a real
``lambda-actors run`` process and a second fake agent to register.

One test, one stack: the steps build on each other (the agent registered
first is the one deregistered later), and one node start is most of the cost.
"""

from __future__ import annotations

import httpx
import trio

from harness.chat import onboard
from lambda_actors.approvals.prompt import APPROVAL_KEY
from lambda_actors.bot.actors.services import ERROR_AGENT_REMOVED, ERROR_KEY
from test_e2e_approvals import Node


def _prompt(user, approval_id: str):
    return next(
        (s for s in user.seen if (s.content.get(APPROVAL_KEY) or {}).get("id") == approval_id and "m.relates_to" not in s.content),
        None,
    )


async def _register(node: Node, **body) -> httpx.Response:
    return await node.request("POST", "/api/v1/agents/register", json=body)


async def _settled(node: Node, registration_id: str) -> dict:
    """The registration once it is no longer pending (polled: a registration
    has no long-poll; each read is one row)."""
    with trio.fail_after(60):
        while True:
            record = (await node.request("GET", f"/api/v1/agents/register/{registration_id}")).json()
            if record["status"] != "pending":
                return record
            await trio.sleep(0.1)


async def _agents(node: Node) -> dict[str, dict]:
    listed = (await node.request("GET", "/api/v1/agents")).json()["agents"]
    return {agent["id"]: agent for agent in listed}


async def test_registration_approved_denied_deregistered_and_a_room_made_for_an_approver(bot_stack, tmp_path, fake_agent):
    alice = await bot_stack.scripted_user("alice")
    await onboard(bot_stack, alice)
    await bot_stack.stop_bot()
    research = await fake_agent()
    node = Node(bot_stack, tmp_path)
    node.node_toml.write_text(node.node_toml.read_text().replace('scopes = ["approvals"]', 'scopes = ["approvals", "agents"]'))
    await node.start()
    try:
        entry = {"owner": alice.user_id, "label": "Research agent", "base_url": research.base_url,
                 "workspace_path": str(research.workspace)}

        # Bad input: every problem named; a token without the scope refused.
        bad = await _register(node, owner="alice", label="", base_url="ftp://x", workspace_path="relative")
        assert bad.status_code == 400 and bad.json()["field"] == "owner"
        assert all(f in bad.json()["message"] for f in ("label", "base_url", "workspace_path"))
        refused = await node.request("POST", "/api/v1/agents/register", token=node.reader_token, json=entry)
        assert refused.status_code == 403

        # Asked in alice's room; the same request_id gives the same registration.
        created = await _register(node, request_id="reg-1", **entry)
        assert created.status_code == 202, created.text
        registration = created.json()
        assert registration["status"] == "pending" and registration["agent_did"] is None
        again = await _register(node, request_id="reg-1", **entry)
        assert (again.status_code, again.json()["id"]) == (200, registration["id"])
        assert (await _register(node, request_id="reg-1", **{**entry, "label": "Other"})).status_code == 409
        prompt = await alice.wait_until(lambda: _prompt(alice, registration["approval_id"]))
        assert "Research agent" in prompt.content["body"] and research.base_url in prompt.content["body"]

        # Approved: a DID, the agent running, a room named by its label, alice
        # invited; a message there reaches the new agent.
        await alice.react(prompt.room_id, prompt.event_id, "✅")
        room = await alice.accept_invite("Research agent")
        approved = await _settled(node, registration["id"])
        assert approved["status"] == "approved" and approved["decided_by"] == alice.user_id
        did = approved["agent_did"]
        assert did.startswith("did:lambda:agent:") and approved["room_id"] == room
        await alice.notice(room, 'This is "Research agent"')
        await alice.say(room, "hello, new agent")
        with trio.fail_after(30):
            await research.wait_for_message(lambda m: m.text == "hello, new agent")
        agents = await _agents(node)
        assert agents["agent-0"]["kind"] == "configured" and agents["agent-0"]["state"] == "running"
        assert (agents[did]["kind"], agents[did]["state"], agents[did]["owner"]) == ("registered", "running", alice.user_id)

        # Denied: no agent, no room.
        denied = (await _register(node, **{**entry, "label": "Unwanted agent"})).json()
        denied_prompt = await alice.wait_until(lambda: _prompt(alice, denied["approval_id"]))
        await alice.react(denied_prompt.room_id, denied_prompt.event_id, "❌")
        assert (await _settled(node, denied["id"]))["status"] == "denied"
        assert set(await _agents(node)) == {"agent-0", "agent-1", did}

        # Deregistered: the room is told, later messages there get the
        # agent-removed error, the record is kept.
        gone = await node.request("DELETE", f"/api/v1/agents/{did}")
        assert gone.status_code == 200 and gone.json()["status"] == "deregistered"
        await alice.notice(room, "was deregistered")
        asked = await alice.say(room, "are you there?")
        answer = await alice.answer(asked)
        assert answer.errors == [ERROR_AGENT_REMOVED]
        assert (await _agents(node))[did]["state"] == "deregistered"
        assert (await node.request("DELETE", "/api/v1/agents/did:lambda:agent:nobody")).status_code == 404
        assert (await node.request("DELETE", "/api/v1/agents/agent-0")).status_code == 422
        assert "are you there?" not in research.received_messages()

        # An approver with no room: carol (agent-0's user, never onboarded)
        # gets a Space and a chat, and the prompt lands there.
        carol = await bot_stack.scripted_user("carol")
        asked_carol = await node.ask(approver=carol.user_id, agent_id="agent-0", action="Ship the release")
        carol_room = await carol.accept_invite("Chat 1")
        assert asked_carol["room_id"] == carol_room
        carol_prompt = await carol.wait_until(lambda: _prompt(carol, asked_carol["id"]))
        assert carol_prompt.room_id == carol_room and "Ship the release" in carol_prompt.content["body"]
        # bob is agent-1's user: the node makes him no room with agent-0.
        bob = bot_stack.users["bob"].user_id
        refused = await node.request("POST", "/api/v1/delivery/approval-request",
                                     json={"approver": bob, "agent_id": "agent-0", "action": "x"})
        assert refused.status_code == 422 and refused.json()["field"] == "approver"
    finally:
        await bot_stack.terminate_bot_process()
    assert not [s for s in alice.seen if s.content.get(ERROR_KEY) not in (None, ERROR_AGENT_REMOVED)]
