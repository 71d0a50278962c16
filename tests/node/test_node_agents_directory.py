"""The agents directory (bot/agents_directory.py): one answer to "which agent
is this id or DID" for agents.yaml's agents and registered ones, and what the
room rules make of a deregistered agent. Pure: no homeserver, no tree."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from lambda_actors.approvals.registration import RegStatus, Registration, move
from lambda_actors.approvals.registration_store import RegistrationStore
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot import room_rules as r
from lambda_actors.bot.actors.node import bot_children
from lambda_actors.bot.actors.services import BotServices
from lambda_actors.bot.agents_directory import AgentDirectory, RegisteredAgent
from lambda_actors.bot.config import AgentConfig, AgentsConfig
from lambda_actors.bot.store import RoomBinding
from lambda_actors.matrix import events as ev
from lambda_actors.node.tree import agent_directory

ALICE, BOB, BOT = "@alice:x", "@bob:x", "@bot:x"
DID = "did:lambda:agent:0b9a7c52-5a8f-4c1e-9d55-2f7d0c1e3a11"
CONFIG = AgentsConfig(
    agents=(AgentConfig("agent-0", "Agent 0", "http://a0", Path("/w0")),),
    user_agents={ALICE: "agent-0", BOB: "agent-0"},
)
RESEARCH = RegisteredAgent(AgentConfig(DID, "Research agent", "http://a9", Path("/w9")), ALICE, "reg_1")


def test_registered_agents_are_found_beside_the_configured_ones():
    directory = AgentDirectory(CONFIG, registered=[RESEARCH])
    assert [a.id for a in directory.agents] == ["agent-0", DID]
    assert directory.agent(DID).label == "Research agent" and directory.agent("agent-0").label == "Agent 0"
    assert directory.configured("agent-0") and not directory.configured(DID)
    with pytest.raises(KeyError):
        directory.agent("did:lambda:agent:unknown")
    # Registration gives nobody a default agent: agents.yaml still decides that.
    assert directory.agent_for(ALICE) is CONFIG.agent("agent-0")


def test_only_an_agents_users_may_have_a_room_with_it():
    directory = AgentDirectory(CONFIG, registered=[RESEARCH])
    assert directory.may_serve(ALICE, "agent-0") and directory.may_serve(BOB, "agent-0")
    assert directory.may_serve(ALICE, DID)  # its owner
    assert not directory.may_serve(BOB, DID)  # agent-0's user, not the registered agent's owner
    assert not directory.may_serve("@mallory:x", "agent-0")


def test_an_agent_added_while_running_is_served_and_a_removed_one_is_known_as_deregistered():
    directory = AgentDirectory(CONFIG)
    directory.add(RESEARCH)
    assert directory.agent(DID) == RESEARCH.agent and directory.registration(DID) == RESEARCH
    directory.remove(DID)
    assert directory.is_deregistered(DID) and [a.id for a in directory.agents] == ["agent-0"]
    with pytest.raises(KeyError):
        directory.agent(DID)
    assert not directory.is_deregistered("agent-0")


def test_the_bot_services_wrap_a_bare_configuration_in_a_directory():
    bot = BotServices(store=None, client=None, agents=CONFIG, user_id=BOT)  # type: ignore[arg-type]
    assert isinstance(bot.agents, AgentDirectory) and bot.agents.config is CONFIG
    directory = AgentDirectory(CONFIG)
    assert BotServices(store=None, client=None, agents=directory, user_id=BOT).agents is directory  # type: ignore[arg-type]


def _text(body: str, event_id: str) -> ev.TextMessage:
    return ev.TextMessage(event_id, "!room:x", ALICE, 1, "m.text", body)


def test_a_message_to_a_registered_agent_goes_to_it():
    rules = r.RoomRules(AgentDirectory(CONFIG, registered=[RESEARCH]))
    bound = RoomBinding("!room:x", ALICE, DID, 3, "Research agent", "!space:x")
    facts = r.RoomFacts(room_id="!room:x", bot_user_id=BOT, binding=bound, owner_rooms=(bound,))
    actions = rules.handle(_text("hello", "$1"), facts, 1_700_000_000.0)
    [deliver] = [a for a in actions if isinstance(a, r.Deliver)]
    assert (deliver.agent_id, deliver.chat_id, deliver.text) == (DID, 3, "hello")


def test_a_deregistered_agents_room_answers_agent_removed_and_is_not_moved_to_another_agent():
    directory = AgentDirectory(CONFIG, registered=[RESEARCH])
    directory.remove(DID)
    rules = r.RoomRules(directory)
    bound = RoomBinding("!room:x", ALICE, DID, 3, "Research agent", "!space:x")
    facts = r.RoomFacts(room_id="!room:x", bot_user_id=BOT, binding=bound, owner_rooms=(bound,))
    first = rules.handle(_text("hi", "$1"), facts, 1_700_000_000.0)
    # alice maps to agent-0, yet the room is not rebound to it (no Bind).
    assert [type(a) for a in first] == [r.Log, r.Finish]
    [finish] = [a for a in first if isinstance(a, r.Finish)]
    [say] = finish.says
    assert say.error == "agent_removed" and "deregistered" in say.body
    # Counted among the rooms of removed agents at start.
    assert r.drifted_bindings([bound, replace(bound, room_id="!a:x", agent_id="agent-0")], directory) == [bound]


def test_a_restarted_node_serves_its_registered_agents_again_and_knows_the_deregistered_ones():
    approvals = ApprovalStore(sqlite3.connect(":memory:"))
    registrations = RegistrationStore(approvals.connection)
    gone_did = "did:lambda:agent:5d1e0a8e-3c2b-4f7a-9b61-0c3e2d1f4a22"
    for n, did in enumerate((DID, gone_did, None)):
        pending = Registration(
            id=f"reg_{n}", client="gateway", request_id=None, fingerprint="f", owner=ALICE, label=f"Agent {n}",
            base_url="http://a9/", workspace_path="/w9", approval_id=f"apr_{n}", created_at=1000.0 + n,
            expires_at=1600.0,
        )
        registrations.create(pending)
        if did is not None:
            approved = move(pending, RegStatus.APPROVED, agent_did=did, decided_at=1100.0 + n)
            registrations.settle(approved, now=1100.0)
    registrations.settle(move(registrations.by_did(gone_did), RegStatus.DEREGISTERED, deregistered_at=2000.0), now=2000.0)

    directory = agent_directory(CONFIG, approvals)
    assert [a.id for a in directory.agents] == ["agent-0", DID]  # the pending one is no agent yet
    assert directory.registration(DID).owner == ALICE and directory.is_deregistered(gone_did)
    bot = BotServices(store=None, client=None, agents=directory, user_id=BOT)  # type: ignore[arg-type]
    agents = next(spec for spec in bot_children(bot) if spec.name == "agents")
    assert [child.name for child in agents.children] == ["agent-0", DID]
