"""The approval API and its actors, over real HTTP on loopback.

The node's listener, ``node/approvals`` and the callback sender run under a
real supervisor; a callback receiver of the test's own (hypercorn too)
fails on purpose. Matrix is replaced by ``ShownViews``, which records what
would be shown: the Matrix side has its own end-to-end tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from functools import partial

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lambda_actors import ChildSpec, open_supervisor
from lambda_actors.approvals.actor import approvals_actor
from lambda_actors.approvals.api import approval_routes
from lambda_actors.approvals.callbacks import Poke, callback_actor
from lambda_actors.approvals.gate import Answer, AskWhich, Decided
from lambda_actors.approvals.messages import Answered, Read, Submit
from lambda_actors.approvals.request import parse
from lambda_actors.loopback.homeserver import free_port
from lambda_actors.runtime.backoff import Backoff
from lambda_actors.approvals.record import Approval, Via
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.node.api import NodeApi, build_app
from lambda_actors.node.config import ApiClient, Listen, NodeConfig
from lambda_actors.node.health import Facts
from lambda_actors.node.http import http_actor
from lambda_actors.node.metrics import NodeMetrics

TOKEN = "la_gateway-token"
READER = "la_reader-token"
ALICE, BOB = "@alice:example.org", "@bob:example.org"


class ShownViews:
    def __init__(self) -> None:
        self.shown: list[Approval] = []
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.changed = trio.Event()

    def agent_label(self, agent_id: str) -> str | None:
        return {"agent-0": "Agent 0"}.get(agent_id)

    def room_for(self, approver: str, agent_id: str) -> str | None:
        return "!room:example.org" if approver in (ALICE, BOB) else None

    async def show(self, ctx, record: Approval) -> None:
        self.shown.append(record)
        self.changed.set()
        self.changed = trio.Event()

    async def ask_which(self, ctx, room_id: str, event_id: str, candidates: tuple[Approval, ...]) -> None:
        self.asked.append((room_id, tuple(c.id for c in candidates)))


class Node:
    def __init__(self, sup, api: NodeApi, client: httpx.AsyncClient, views: ShownViews, store: ApprovalStore) -> None:
        self.sup, self.api, self.http, self.views, self.store = sup, api, client, views, store

    async def post(self, body: dict, token: str = TOKEN) -> httpx.Response:
        return await self.http.post(
            "/api/v1/delivery/approval-request", json=body, headers={"Authorization": f"Bearer {token}"}
        )

    async def get(self, path: str, token: str = TOKEN) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {token}"})

    async def answer(self, answer: Answer):
        return await self.sup.address("approvals").call(Answered("!room:example.org", "$answer", answer))


@pytest.fixture
async def node():
    db = sqlite3.connect(":memory:")
    store = ApprovalStore(db)
    views = ShownViews()
    config = NodeConfig(
        clients=(
            ApiClient("gateway", hashlib.sha256(TOKEN.encode()).hexdigest(), frozenset({"approvals"})),
            ApiClient("reader", hashlib.sha256(READER.encode()).hexdigest(), frozenset({"dag"})),
        )
    )
    facts = lambda: Facts(now=0, last_sync_at=0, sync_timeout_s=30, store_writable=True, agents={}, outbox_depth=0)  # noqa: E731
    api = NodeApi(config, NodeMetrics(), facts)
    specs = [
        ChildSpec("callbacks", partial(callback_actor, retry=Backoff(min=0.01, max=0.05)), args=(store,)),
    ]
    async with open_supervisor("node", specs) as sup:
        poke = lambda: sup.address("callbacks").send_nowait(Poke())  # noqa: E731
        sup.start_child(ChildSpec("approvals", approvals_actor, args=(store, views, poke)))
        api.routes.extend(approval_routes(sup.address("approvals"), store))
        listen = Listen("127.0.0.1", free_port())
        sup.start_child(ChildSpec("http", http_actor, args=(build_app(api), api, listen)))
        await api.listening.wait()
        async with httpx.AsyncClient(base_url=api.urls[0]) as client:
            yield Node(sup, api, client, views, store)


REQUEST = {"approver": ALICE, "agent_id": "agent-0", "action": "Delete the build folder", "details": "rm -rf build/"}


async def test_a_request_is_created_pending_and_shown_to_its_approver(node):
    response = await node.post(REQUEST)
    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("apr_") and body["status"] == "pending"
    assert (body["approver"], body["agent_id"], body["room_id"]) == (ALICE, "agent-0", "!room:example.org")
    assert [r.id for r in node.views.shown] == [body["id"]]


async def test_the_same_request_id_twice_is_one_record_and_another_body_is_409(node):
    first = await node.post({**REQUEST, "request_id": "gw-1"})
    again = await node.post({**REQUEST, "request_id": "gw-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(node.views.shown) == 1  # one prompt
    conflict = await node.post({**REQUEST, "request_id": "gw-1", "action": "Something else"})
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({**REQUEST, "agent_id": "agent-9"}, 422, "agent_id"),
        ({**REQUEST, "approver": "@carol:example.org"}, 422, "approver"),
        ({**REQUEST, "timeout_s": 5}, 400, "timeout_s"),
        ({"approver": ALICE}, 400, "agent_id"),
    ],
)
async def test_invalid_or_unservable_requests_name_the_field(node, body, status, field):
    response = await node.post(body)
    assert response.status_code == status
    assert response.json()["field"] == field


async def test_tokens_are_checked_before_anything_else(node):
    assert (await node.post(REQUEST, token="nope")).status_code == 401
    assert (await node.post(REQUEST, token=READER)).status_code == 403
    assert node.views.shown == []


async def test_a_reaction_approves_and_a_waiting_reader_gets_the_decision(node):
    created = (await node.post(REQUEST)).json()
    results = {}
    async with trio.open_nursery() as nursery:

        async def wait_for_it():
            results["read"] = (await node.get(f"/api/v1/delivery/approval-request/{created['id']}?wait=30")).json()

        nursery.start_soon(wait_for_it)
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)  # the GET is parked in the actor
        verdict = await node.answer(Answer(ALICE, True, Via.REACTION, sent_at=time.time(), target=created["id"]))
        assert isinstance(verdict, Decided)
    assert results["read"]["status"] == "approved"
    assert (results["read"]["decided_by"], results["read"]["decided_via"]) == (ALICE, "reaction")
    assert node.views.shown[-1].status == "approved"  # the prompt is edited


async def test_a_bare_yes_with_two_pending_asks_which_and_decides_nothing(node):
    first = (await node.post(REQUEST)).json()
    second = (await node.post({**REQUEST, "action": "Deploy"})).json()
    verdict = await node.answer(Answer(ALICE, True, Via.COMMAND, sent_at=time.time()))
    assert isinstance(verdict, AskWhich)
    assert node.views.asked == [("!room:example.org", (first["id"], second["id"]))]
    for record in (first, second):
        assert (await node.get(f"/api/v1/delivery/approval-request/{record['id']}")).json()["status"] == "pending"


async def test_someone_elses_answer_changes_nothing(node):
    created = (await node.post(REQUEST)).json()
    await node.answer(Answer(BOB, True, Via.REACTION, sent_at=time.time(), target=created["id"]))
    await node.answer(Answer(BOB, True, Via.COMMAND, sent_at=time.time()))
    assert (await node.get(f"/api/v1/delivery/approval-request/{created['id']}")).json()["status"] == "pending"


async def test_cancel_withdraws_a_pending_request_and_the_first_decision_stands(node):
    created = (await node.post(REQUEST)).json()
    path = f"/api/v1/delivery/approval-request/{created['id']}"
    cancel = await node.http.post(f"{path}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (cancel.status_code, cancel.json()["status"], cancel.json()["decided_via"]) == (200, "cancelled", "api")
    await node.answer(Answer(ALICE, True, Via.REACTION, sent_at=time.time(), target=created["id"]))
    assert (await node.get(path)).json()["status"] == "cancelled"


async def test_unknown_ids_are_404_and_waits_are_bounded(node):
    assert (await node.get("/api/v1/delivery/approval-request/apr_nope")).status_code == 404
    created = (await node.post(REQUEST)).json()
    too_long = await node.get(f"/api/v1/delivery/approval-request/{created['id']}?wait=61")
    assert (too_long.status_code, too_long.json()["field"]) == (400, "wait")


async def test_the_audit_list_is_newest_first_and_filtered(node):
    ids = [(await node.post({**REQUEST, "action": f"step {n}"})).json()["id"] for n in range(3)]
    listed = (await node.get("/api/v1/delivery/approval-requests")).json()["approvals"]
    assert [r["id"] for r in listed] == ids[::-1]
    await node.answer(Answer(ALICE, True, Via.REACTION, sent_at=time.time(), target=ids[1]))
    approved = (await node.get("/api/v1/delivery/approval-requests?status=approved")).json()["approvals"]
    assert [r["id"] for r in approved] == [ids[1]]
    assert (await node.get("/api/v1/delivery/approval-requests?status=maybe")).status_code == 400


async def test_a_request_expires_at_its_deadline_and_that_means_no(autojump_clock):
    store, views = ApprovalStore(sqlite3.connect(":memory:")), ShownViews()
    spec = ChildSpec("approvals", approvals_actor, args=(store, views, lambda: None, trio.current_time))
    async with open_supervisor("node", [spec]) as sup:
        request = parse({**REQUEST, "timeout_s": 10})
        record, _ = await sup.address("approvals").call(Submit("gateway", TOKEN, request))
        final = await sup.address("approvals").call(Read(record.id, wait_s=60), timeout=70)
    assert (final.status, final.decided_via) == ("expired", "timeout")
    assert final.decided_at == pytest.approx(record.expires_at)
    assert views.shown[-1].status == "expired"  # the prompt says so


async def test_a_callback_that_fails_three_times_is_retried_then_delivered_once_signed(node):
    received: list[tuple[str, str, bytes]] = []
    accepted = trio.Event()

    async def receiver(request: Request) -> Response:
        received.append((request.headers["x-lambda-delivery"], request.headers["x-lambda-signature"], await request.body()))
        if len(received) <= 3:
            return Response(status_code=500)
        accepted.set()
        return Response(status_code=204)

    config = Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(Starlette(routes=[Route("/cb", receiver, methods=["POST"])]), config, task_status=task_status))
        created = (await node.post({**REQUEST, "callback_url": f"{binds[0]}/cb"})).json()
        await node.answer(Answer(ALICE, False, Via.COMMAND, sent_at=time.time()))
        await accepted.wait()
        nursery.cancel_scope.cancel()
    assert len(received) == 4
    assert len({delivery for delivery, _, _ in received}) == 1  # one delivery id throughout
    delivery, signed, body = received[-1]
    assert signed == "sha256=" + hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(body)["id"] == created["id"] and json.loads(body)["status"] == "denied"
    assert node.store.next_callback_at() is None  # delivered: nothing owed any more
