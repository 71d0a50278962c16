"""The node's HTTP listener and the rules every route shares (SPEC 7, 7.3).

The listener is the real thing: hypercorn's Trio worker on a loopback port
under a real supervisor, spoken to with httpx. The health verdict is a pure
function, tested on its own.
"""

from __future__ import annotations

import hashlib
import json
import socket

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lambda_actors import Backoff, ChildSpec, Restarted, open_supervisor
from lambda_actors.loopback.homeserver import free_port
from lambda_actors.node.api import MAX_BODY, NodeApi, build_app, read_json, require
from lambda_actors.node.config import ApiClient, Listen, NodeConfig
from lambda_actors.node.health import AgentHealth, Facts, assess
from lambda_actors.node.http import http_actor
from lambda_actors.node.metrics import NodeMetrics, Snapshot

TOKEN = "la_test-token"
OTHER = "la_other-token"


async def _echo(request: Request) -> JSONResponse:
    client = require(request, "approvals")
    return JSONResponse({"client": client.name, "body": await read_json(request)})


def _api(facts: Facts | None = None) -> NodeApi:
    config = NodeConfig(
        node_id="test",
        clients=(
            ApiClient("gateway", hashlib.sha256(TOKEN.encode()).hexdigest(), frozenset({"approvals"})),
            ApiClient("reader", hashlib.sha256(OTHER.encode()).hexdigest(), frozenset({"dag"})),
        ),
    )
    snapshot = Snapshot({"agent-0": "running", "agent-1": "parked"}, 3, 1, 2, 0.5)
    return NodeApi(
        config,
        NodeMetrics(lambda: snapshot),
        lambda: facts or _facts(),
        routes=[Route("/api/v1/echo", _echo, methods=["POST"])],
    )


def _facts(**changes) -> Facts:
    values = dict(
        now=100.0, last_sync_at=95.0, sync_timeout_s=30.0, store_writable=True,
        agents={"agent-0": AgentHealth("running")}, outbox_depth=0,
    )
    values.update(changes)
    return Facts(**values)


# -- the health verdict (pure) -------------------------------------------------


def test_a_node_whose_sync_answers_and_store_writes_is_ok():
    assert assess(_facts())[0] == "ok"


@pytest.mark.parametrize(
    "facts",
    [
        _facts(last_sync_at=None),  # still starting
        _facts(last_sync_at=39.9),  # silent for more than twice the long-poll
        _facts(store_writable=False),
    ],
)
def test_a_node_that_cannot_take_in_work_is_down(facts):
    assert assess(facts)[0] == "down"


def test_sync_silent_for_exactly_twice_its_timeout_is_still_ok():
    assert assess(_facts(last_sync_at=40.0))[0] == "ok"


def test_a_parked_agent_or_a_deep_outbox_is_degraded_and_says_why():
    status, checks = assess(_facts(agents={"a": AgentHealth("parked", "2026-12-02T12:00:00Z")}))
    assert status == "degraded"
    assert checks["agents"]["a"] == {"state": "parked", "retry_at": "2026-12-02T12:00:00Z"}
    assert assess(_facts(outbox_depth=1001))[0] == "degraded"


# -- the listener, for real ------------------------------------------------------


@pytest.fixture
async def node_http():
    api = _api()
    spec = ChildSpec("http", http_actor, args=(build_app(api), api, Listen("127.0.0.1", free_port())))
    async with open_supervisor("node", [spec]) as sup:
        await api.listening.wait()
        async with httpx.AsyncClient(base_url=api.urls[0]) as client:
            yield api, client, sup


async def test_healthz_answers_with_the_verdict_and_its_checks(node_http):
    _, client, _ = node_http
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["checks"]["agents"] == {"agent-0": {"state": "running"}}


async def test_healthz_is_503_when_the_node_is_down():
    api = _api(_facts(store_writable=False))
    async with open_supervisor("node", [ChildSpec("http", http_actor, args=(build_app(api), api, Listen("127.0.0.1", free_port())))]):
        await api.listening.wait()
        async with httpx.AsyncClient(base_url=api.urls[0]) as client:
            response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "down"


async def test_metrics_come_from_the_nodes_own_registry_with_lambda_families_only(node_http):
    _, client, _ = node_http
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")}
    assert families and all(name.startswith("lambda_") for name in families)
    assert 'lambda_agents{state="parked"} 1.0' in response.text
    assert 'lambda_http_requests_total{code="200",route="/healthz"} 1.0' in response.text
    openmetrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


async def test_two_nodes_in_one_process_count_apart(node_http):
    first, client, _ = node_http
    second = _api()
    await client.get("/healthz")
    assert b'lambda_http_requests_total{code="200",route="/healthz"} 1.0' in first.metrics.render(None)[0]
    assert b"lambda_http_requests_total{" not in second.metrics.render(None)[0]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ({"Authorization": f"Bearer {OTHER}"}, 403, "forbidden"),
    ],
)
async def test_tokens_and_scopes_are_checked(node_http, headers, status, code):
    _, client, _ = node_http
    response = await client.post("/api/v1/echo", json={}, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert "wrong" not in response.text and OTHER not in response.text


async def test_a_valid_call_reaches_its_route(node_http):
    _, client, _ = node_http
    response = await client.post("/api/v1/echo", json={"a": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.json() == {"client": "gateway", "body": {"a": 1}}


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"a=1", "application/x-www-form-urlencoded", 415),
        (b"[" * 100_000, "application/json", 413),
        (b"{}" + b" " * MAX_BODY, "application/json", 413),
    ],
)
async def test_bad_bodies_get_a_4xx_with_the_error_shape(node_http, content, content_type, status):
    _, client, _ = node_http
    response = await client.post(
        "/api/v1/echo", content=content, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    )
    assert response.status_code == status
    assert set(response.json()) >= {"error", "message"}


async def test_a_chunked_body_past_the_limit_is_cut_off(node_http):
    _, client, _ = node_http

    async def chunks():
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    response = await client.post(
        "/api/v1/echo", content=chunks(), headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_unknown_routes_and_methods_get_json_errors(node_http):
    _, client, _ = node_http
    missing = await client.get("/api/v1/nothing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = await client.delete("/healthz")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")


async def test_a_listener_that_cannot_bind_is_restarted_and_nobody_else_notices(nursery):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    api = _api()

    async def sibling(ctx):
        async for _ in ctx.mailbox:
            pass

    fast = Backoff(min=0.01, max=0.05, jitter=0)
    specs = [
        ChildSpec("other", sibling),
        ChildSpec("http", http_actor, args=(build_app(api), api, Listen("127.0.0.1", port)), backoff=fast),
    ]
    async with open_supervisor("node", specs, intensity=1000, period=1) as sup:
        with sup.subscribe() as events:
            async for event in events:
                if isinstance(event, Restarted) and event.path == "node/http":
                    break
        taken.close()  # the port is free now: the next restart listens
        await api.listening.wait()
        assert sup.child_state("other").restarts == 0
        async with httpx.AsyncClient(base_url=api.urls[0]) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_a_clean_stop_lets_a_request_in_flight_finish(nursery):
    api = _api()
    entered, release = trio.Event(), trio.Event()

    async def slow(request: Request) -> JSONResponse:
        entered.set()
        await release.wait()
        return JSONResponse({"done": True})

    api.routes.append(Route("/slow", slow))
    app = build_app(api)
    async with open_supervisor("node", [ChildSpec("http", http_actor, args=(app, api, Listen("127.0.0.1", free_port())))]) as sup:
        await api.listening.wait()
        async with httpx.AsyncClient(base_url=api.urls[0]) as client:
            answered = trio.Event()
            results = {}

            async def call_slow():
                results["slow"] = (await client.get("/slow")).json()
                answered.set()

            nursery.start_soon(call_slow)
            await entered.wait()
            stopped = trio.Event()

            async def stop():
                await sup.terminate_child("http")
                stopped.set()

            nursery.start_soon(stop)
            await api.draining.wait()
            assert not stopped.is_set()  # still draining: the slow request holds it
            release.set()
            await stopped.wait()
            await answered.wait()
    assert results == {"slow": {"done": True}}


async def test_requests_arriving_while_draining_get_503():
    api = _api()
    api.draining.set()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(api)), base_url="http://node") as client:
        response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"


# -- fuzzing: client input never causes a 500 ------------------------------------

_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=512), st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ))),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
    authorization=st.one_of(st.just(f"Bearer {TOKEN}"), st.just(f"Bearer {OTHER}"), _header_text),
    path=st.sampled_from(["/api/v1/echo", "/healthz", "/metrics", "/api/v1/../echo", "/%00"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_no_request_gets_a_500(body, content_type, authorization, path, method):
    app = build_app(_api())

    async def one() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            headers = {"Authorization": authorization}
            if content_type:
                headers["Content-Type"] = content_type
            response = await client.request(method, path, content=body, headers=headers)
            if response.status_code >= 400:
                assert set(response.json()) >= {"error", "message"}
            return response.status_code

    status = trio.run(one)
    assert status < 500 or status == 503
