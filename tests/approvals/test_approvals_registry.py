"""``node/registry`` with the approvals gate, under a real supervisor, for the
paths that never reach Matrix: a registration denied or left unanswered
(default deny at the deadline), its callback, idempotency, and the owners it
refuses. Matrix is replaced by ``ShownViews`` (what would be shown); the
approved path (DID, agent started, room made) is end to end with Synapse
(tests/e2e/test_e2e_registration.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from functools import partial
from pathlib import Path

import pytest
import trio.testing

from lambda_actors import ChildSpec, open_supervisor
from lambda_actors.approvals.actor import approvals_actor
from lambda_actors.approvals.gate import Answer, Decided
from lambda_actors.approvals.messages import Answered, Conflict, Unservable
from lambda_actors.approvals.record import Approval, Source, Status, Via
from lambda_actors.approvals.registration import RegStatus, parse
from lambda_actors.approvals.registration_store import RegistrationStore
from lambda_actors.approvals.registry import registry_actor
from lambda_actors.approvals.registry_messages import Register, Settle
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.actors.services import BotServices
from lambda_actors.bot.config import AgentConfig, AgentsConfig
from lambda_actors.bot.store import RoomBinding, Store

ALICE, BOT = "@alice:example.org", "@bot:example.org"
ROOM = "!room:example.org"
CONFIG = AgentsConfig(agents=(AgentConfig("agent-0", "Agent 0", "http://a0", Path("/w0")),), user_agents={ALICE: "agent-0"})
BODY = {"owner": ALICE, "label": "Research agent", "base_url": "http://agents.internal:7000/agent_9/",
        "workspace_path": "/agents/9", "timeout_s": 10, "callback_url": "https://gw.example/cb"}


class ShownViews:
    def __init__(self) -> None:
        self.shown: list[Approval] = []

    def agent_label(self, agent_id: str) -> str | None:
        return {"agent-0": "Agent 0"}.get(agent_id)

    def room_for(self, approver: str, agent_id: str) -> str | None:
        return None

    async def show(self, ctx, record: Approval) -> None:
        self.shown.append(record)

    async def ask_which(self, ctx, room_id, event_id, candidates) -> None:
        pass


class Node:
    def __init__(self, sup, approvals: ApprovalStore, registrations: RegistrationStore, views: ShownViews, clock) -> None:
        self.sup, self.approvals, self.registrations, self.views, self.clock = sup, approvals, registrations, views, clock

    async def register(self, body: dict = BODY, client: str = "gateway"):
        request = parse(body)
        assert not isinstance(request, list), request
        return await self.sup.address("registry").call(Register(client, "la_token", request))

    async def settled(self) -> None:
        """Every actor has done what it was told (nothing runs, nothing is due)."""
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)


@pytest.fixture
async def node(tmp_path):
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    clock.offset = offset  # type: ignore[attr-defined]
    db = sqlite3.connect(":memory:")
    approvals, registrations = ApprovalStore(db), RegistrationStore(db)
    store = Store.open(tmp_path / "bot.sqlite3")
    # alice's room with her agent: where she is asked.
    store.bind_room(RoomBinding(ROOM, ALICE, "agent-0", store.new_chat_id(ROOM), "Chat 1", "!space:example.org"))
    bot = BotServices(store, client=None, agents=CONFIG, user_id=BOT)  # type: ignore[arg-type]
    views = ShownViews()
    async with open_supervisor("node") as sup:

        def on_final(record: Approval) -> None:
            if record.source is Source.REGISTRATION:
                sup.address("registry").send_nowait(Settle())

        sup.start_child(ChildSpec("approvals", partial(approvals_actor, clock=clock, on_final=on_final), args=(approvals, views)))
        sup.start_child(ChildSpec("registry", partial(registry_actor, clock=clock), args=(bot, registrations, approvals)))
        yield Node(sup, approvals, registrations, views, clock)
    store.close()


async def test_a_registration_is_asked_in_the_owners_room_as_an_approval_record(node):
    registration, created = await node.register()
    assert created and registration.status is RegStatus.PENDING and registration.agent_did is None
    [shown] = node.views.shown
    assert (shown.id, shown.source, shown.approver, shown.room_id) == (registration.approval_id, Source.REGISTRATION, ALICE, ROOM)
    assert shown.agent_id == registration.id and "Research agent" in shown.action
    # The same request_id: the same registration, asked once; another body: a conflict.
    first, _ = await node.register({**BODY, "request_id": "r1"})
    again, created = await node.register({**BODY, "request_id": "r1"})
    assert (again.id, created, len(node.views.shown)) == (first.id, False, 2)
    with pytest.raises(Conflict):
        await node.register({**BODY, "request_id": "r1", "label": "Other"})


async def test_an_unanswered_registration_expires_at_its_deadline_and_its_callback_is_due(node):
    registration, _ = await node.register()
    node.clock.offset[0] = 11.0  # past the 10 s deadline
    node.sup.address("approvals").send_nowait("wake up")  # it looks at its deadlines again
    await node.settled()
    assert node.approvals.get(registration.approval_id).status is Status.EXPIRED
    expired = node.registrations.get(registration.id)
    assert expired.status is RegStatus.EXPIRED and expired.agent_did is None
    (callback,) = node.approvals.due_callbacks(now=node.clock())
    assert callback.approval_id == registration.id and json.loads(callback.body)["status"] == "expired"


async def test_the_owners_no_is_the_registrations_no(node):
    registration, _ = await node.register()
    answer = Answer(ALICE, False, Via.REACTION, sent_at=node.clock(), target=registration.approval_id)
    verdict = await node.sup.address("approvals").call(Answered(ROOM, "$no", answer))
    assert isinstance(verdict, Decided)
    await node.settled()
    denied = node.registrations.get(registration.id)
    assert (denied.status, denied.decided_by, denied.agent_did) == (RegStatus.DENIED, ALICE, None)


async def test_an_owner_the_node_serves_no_agent_is_refused_by_name(node):
    with pytest.raises(Unservable) as refused:
        await node.register({**BODY, "owner": "@mallory:example.org"})
    assert refused.value.field == "owner" and "user_agents" in str(refused.value)
    assert node.views.shown == [] and node.registrations.pending() == []
