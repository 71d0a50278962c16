"""The DAG routes (SPEC 8 "API"), through the node's real ASGI app.

Reads go to a real store (SQLite under tmp_path); the run actors are a fake
``DagControl`` that does what they will do to the store, plus a live feed
the test drives. The routes' unit test: the run actors have their own.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping, Sequence

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.dag.api import dag_routes
from lambda_actors.dag.scheduler import RunStatus, TaskStatus
from lambda_actors.dag.spec import parse_dag
from lambda_actors.dag.status import LogicalEvent
from lambda_actors.dag.store import DagStore, NotFound, StoredSpec, open_dag_store
from lambda_actors.node.api import NodeApi, build_app
from lambda_actors.node.config import ApiClient, NodeConfig
from lambda_actors.node.health import Facts
from lambda_actors.node.metrics import NodeMetrics
from lambda_actors.runtime.errors import CallError

TOKEN = "la_dag-token"
OTHER = "la_approvals-token"

DIAMOND = """
dag_id = "diamond"
owner = "@alice:example.org"
[[tasks]]
id = "a"
agent = "agent-0"
prompt = "start"
[[tasks]]
id = "b"
deps = ["a"]
agent = "agent-0"
prompt = "{{ a.output }}"
"""


class FakeControl:
    """What the run actors do to the store, without running anything."""

    def __init__(self, store: DagStore) -> None:
        self.store = store
        self.now = 1000.0
        self.calls: list[tuple[str, ...]] = []
        self.feeds: dict[str, trio.MemorySendChannel[LogicalEvent]] = {}
        self.watching = trio.Event()
        self.unwatched = trio.Event()
        self.broken = False

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    async def publish(self, document: str | Mapping[str, Any], client: str) -> StoredSpec:
        self.calls.append(("publish", client))
        return self.store.publish(parse_dag(document, known_agents={"agent-0"}), client, self.tick())

    async def confirm(self, dag_id: str, version: str | None, client: str, workers: Sequence[str] = ()) -> str:
        self.calls.append(("confirm", dag_id, str(version), client, *workers))
        stored = self.store.spec(dag_id, version)
        return self.store.create_run(stored.spec, self.tick()).run_id

    async def cancel(self, run_id: str) -> None:
        self._guard()
        self.store.set_run_status(run_id, "cancelled", self.tick())

    async def pause(self, run_id: str) -> None:
        self._guard()
        self.store.set_run_status(run_id, "paused", self.tick())

    async def resume(self, run_id: str) -> None:
        self._guard()
        self.store.set_run_status(run_id, "running", self.tick())

    def _guard(self) -> None:
        if self.broken:
            raise CallError("node/dag is restarting")

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[AsyncIterator[LogicalEvent]]:
        self._guard()
        send, receive = trio.open_memory_channel[LogicalEvent](100)
        self.feeds[run_id] = send
        self.watching.set()
        try:
            async with receive:
                yield receive
        finally:
            self.unwatched.set()


@pytest.fixture
def store(tmp_path):
    opened = open_dag_store(tmp_path / "bot.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def control(store):
    return FakeControl(store)


@pytest.fixture
async def http(store, control):
    config = NodeConfig(
        node_id="test",
        clients=(
            ApiClient("gateway", hashlib.sha256(TOKEN.encode()).hexdigest(), frozenset({"dag"})),
            ApiClient("other", hashlib.sha256(OTHER.encode()).hexdigest(), frozenset({"approvals"})),
        ),
    )
    facts = lambda: Facts(now=0, last_sync_at=0, sync_timeout_s=30, store_writable=True, agents={}, outbox_depth=0)  # noqa: E731
    api = NodeApi(config, NodeMetrics(), facts, routes=dag_routes(control, store, keepalive_s=0.05))
    transport = httpx.ASGITransport(app=build_app(api))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://node", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


TOML = {"Content-Type": "application/toml"}


async def publish_and_confirm(http) -> str:
    assert (await http.post("/api/v1/dag/publish", content=DIAMOND, headers=TOML)).status_code == 200
    response = await http.post("/api/v1/dag/diamond/confirm")
    assert response.status_code == 201
    return response.json()["run_id"]


# -- publish and confirm -----------------------------------------------------------------


async def test_publish_toml_or_the_same_as_json_gives_one_version(http, control):
    toml = await http.post("/api/v1/dag/publish", content=DIAMOND, headers=TOML)
    assert toml.status_code == 200
    version = parse_dag(DIAMOND).version
    assert toml.json() == {"dag_id": "diamond", "version": version}
    as_json = await http.post("/api/v1/dag/publish", json=parse_dag(DIAMOND).to_mapping())
    assert as_json.json() == {"dag_id": "diamond", "version": version}
    assert control.calls == [("publish", "gateway"), ("publish", "gateway")]


async def test_a_spec_with_problems_is_422_with_every_problem_and_its_place(http, store):
    bad = DIAMOND.replace('deps = ["a"]', 'deps = ["a", "zz"]').replace('agent = "agent-0"\nprompt = "start"', 'agent = "agent-9"\nprompt = "start"')
    response = await http.post("/api/v1/dag/publish", content=bad, headers=TOML)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "unprocessable"
    where = [p["where"] for p in body["problems"]]
    assert len(where) == 2 and all(w.startswith("tasks") for w in where)
    assert any("zz" in p["what"] for p in body["problems"]) and any("agent-9" in p["what"] for p in body["problems"])
    with pytest.raises(NotFound):
        store.spec("diamond")  # nothing kept


async def test_publish_refuses_other_bodies_with_the_fix(http):
    response = await http.post("/api/v1/dag/publish", content=b"<dag/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415 and "application/toml" in response.json()["message"]
    response = await http.post("/api/v1/dag/publish", content=b"\xff\xfe", headers=TOML)
    assert response.status_code == 400 and "UTF-8" in response.json()["message"]


async def test_confirm_passes_the_workers_of_a_federation_run_and_refuses_malformed_ones(http, control, store):
    await http.post("/api/v1/dag/publish", content=DIAMOND, headers={"Content-Type": "application/toml"})
    answer = await http.post("/api/v1/dag/diamond/confirm", json={"workers": ["node-b", "node-c"]})
    assert answer.status_code == 201
    assert control.calls[-1] == ("confirm", "diamond", "None", "gateway", "node-b", "node-c")
    for bad in ("node-b", [1], [""]):
        refused = await http.post("/api/v1/dag/diamond/confirm", json={"workers": bad})
        assert refused.status_code == 400 and refused.json()["field"] == "workers"
    assert len([c for c in control.calls if c[0] == "confirm"]) == 1


async def test_confirm_starts_a_run_of_the_latest_or_the_named_version(http, control, store):
    run_id = await publish_and_confirm(http)
    assert store.run(run_id).status is RunStatus.CREATED
    version = parse_dag(DIAMOND).version
    pinned = await http.post("/api/v1/dag/diamond/confirm", json={"version": version})
    assert pinned.status_code == 201 and pinned.json()["run_id"] != run_id
    assert control.calls[-1] == ("confirm", "diamond", version, "gateway")
    unknown = await http.post("/api/v1/dag/nope/confirm")
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]
    bad = await http.post("/api/v1/dag/diamond/confirm", json={"versoin": "x"})
    assert bad.status_code == 400 and bad.json()["field"] == "versoin"


async def test_the_dag_scope_is_required(http):
    for method, path in [("POST", "/api/v1/dag/publish"), ("GET", "/api/v1/dag/runs"), ("GET", "/api/v1/dag/runs/x")]:
        assert (await http.request(method, path, headers={"Authorization": f"Bearer {OTHER}"})).status_code == 403
        assert (await http.request(method, path, headers={"Authorization": ""})).status_code == 401


# -- reading runs ---------------------------------------------------------------------------


async def test_runs_are_listed_newest_first_and_by_status(http, control):
    first = await publish_and_confirm(http)
    second = (await http.post("/api/v1/dag/diamond/confirm")).json()["run_id"]
    await http.post(f"/api/v1/dag/runs/{first}/resume")  # created -> running
    runs = (await http.get("/api/v1/dag/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [second, first]
    assert runs[0]["progress"] == {"completed": 0, "total": 2, "failed": 0}
    assert runs[0]["created_at"].endswith("Z")
    running = (await http.get("/api/v1/dag/runs", params={"status": "running"})).json()["runs"]
    assert [r["run_id"] for r in running] == [first]
    assert (await http.get("/api/v1/dag/runs", params={"limit": 1})).json()["runs"][0]["run_id"] == second
    bad = await http.get("/api/v1/dag/runs", params={"status": "done"})
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    assert (await http.get("/api/v1/dag/runs", params={"limit": "0"})).status_code == 400


async def test_a_run_shows_every_task_with_status_attempts_and_timings(http, store):
    run_id = await publish_and_confirm(http)
    store.set_run_status(run_id, "running", 2000.0)
    store.start_attempt(run_id, "a", 2001.0, session_id=f"{run_id}:a")
    store.finish(run_id, "a", "pending", 2002.0, reason="agent error")
    store.start_attempt(run_id, "a", 2007.0, session_id=f"{run_id}:a")
    store.finish(run_id, "a", "completed", 2008.5, output="A")
    body = (await http.get(f"/api/v1/dag/runs/{run_id}")).json()
    assert body["status"] == "running" and body["progress"] == {"completed": 1, "total": 2, "failed": 0}
    a, b = body["tasks"]
    assert (a["task_id"], a["status"], a["attempts"]) == ("a", "completed", 2)
    assert a["started_at"] == "1970-01-01T00:33:21.000Z" and a["finished_at"] == "1970-01-01T00:33:28.500Z"
    assert [(h["attempt"], h["status"], h["reason"]) for h in a["history"]] == [
        (1, "failed", "agent error"), (2, "completed", None),
    ]
    assert a["history"][0]["session_id"] == f"{run_id}:a"
    assert (b["status"], b["attempts"], b["history"]) == ("pending", 0, [])
    missing = await http.get("/api/v1/dag/runs/run-nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_a_tasks_output_is_served_whole(http, store):
    run_id = await publish_and_confirm(http)
    big = "line of output\n" * 20_000  # 300 KB: the status room gets a summary
    store.start_attempt(run_id, "a", 1.0)
    store.finish(run_id, "a", "completed", 2.0, output=big, artifacts=["out/report.md"])
    body = (await http.get(f"/api/v1/dag/runs/{run_id}/tasks/a/output")).json()
    assert body["output"] == big and body["size"] == len(big) and body["artifacts"] == ["out/report.md"]
    assert body["attempt"] == 1
    pending = await http.get(f"/api/v1/dag/runs/{run_id}/tasks/b/output")
    assert pending.status_code == 404 and "pending" in pending.json()["message"]
    assert (await http.get(f"/api/v1/dag/runs/{run_id}/tasks/zz/output")).status_code == 404
    assert (await http.get("/api/v1/dag/runs/run-nope/tasks/a/output")).status_code == 404


# -- moves -------------------------------------------------------------------------------


async def test_pause_resume_cancel_answer_the_run_and_an_ended_run_is_409(http, store):
    run_id = await publish_and_confirm(http)
    assert (await http.post(f"/api/v1/dag/runs/{run_id}/resume")).json()["status"] == "running"
    assert (await http.post(f"/api/v1/dag/runs/{run_id}/pause")).json()["status"] == "paused"
    assert (await http.post(f"/api/v1/dag/runs/{run_id}/resume")).json()["status"] == "running"
    cancelled = await http.post(f"/api/v1/dag/runs/{run_id}/cancel")
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"] is not None
    for move in ("pause", "resume", "cancel"):
        refused = await http.post(f"/api/v1/dag/runs/{run_id}/{move}")
        assert refused.status_code == 409 and refused.json()["error"] == "conflict"
        assert "cancelled" in refused.json()["message"]
    assert store.run(run_id).status is RunStatus.CANCELLED
    assert (await http.post("/api/v1/dag/runs/run-nope/pause")).status_code == 404


async def test_a_restarting_control_is_503(http, control):
    run_id = await publish_and_confirm(http)
    control.broken = True
    response = await http.post(f"/api/v1/dag/runs/{run_id}/pause")
    assert response.status_code == 503 and "retry" in response.json()["message"]


# -- server-sent events -----------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_events_stream_a_snapshot_then_every_transition_until_the_run_ends(http, control, store, autojump_clock):
    run_id = await publish_and_confirm(http)
    transitions = [
        LogicalEvent("cis.dag.run.started", {"run_id": run_id, "progress": {"completed": 0, "total": 2}}),
        LogicalEvent("cis.dag.task.status", {"run_id": run_id, "task_id": "a", "status": "running", "attempt": 1}),
        LogicalEvent("cis.dag.task.status", {"run_id": run_id, "task_id": "a", "status": "completed", "attempt": 1}),
        LogicalEvent("cis.dag.run.completed", {"run_id": run_id, "progress": {"completed": 2, "total": 2}}),
    ]
    result: dict[str, httpx.Response] = {}

    async def watcher() -> None:
        result["response"] = await http.get(f"/api/v1/dag/runs/{run_id}/events")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await control.watching.wait()
        feed = control.feeds[run_id]
        for event in transitions:
            feed.send_nowait(event)
        # Idle for longer than the keepalive (the clock jumps; no wall time
        # passes): an idle stream says it is there.
        await trio.sleep(1)
        await feed.aclose()  # the run's actors end the feed after its final event
    response = result["response"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert ": keepalive" in response.text
    events = parse_sse(response.text)
    assert events[0][0] == "snapshot" and events[0][1]["run_id"] == run_id
    assert [t["task_id"] for t in events[0][1]["tasks"]] == ["a", "b"]
    assert events[1:] == [(e.type, dict(e.content)) for e in transitions]
    assert control.unwatched.is_set()


async def test_events_of_an_ended_run_are_its_snapshot_alone(http, control, store):
    run_id = await publish_and_confirm(http)
    store.set_run_status(run_id, "cancelled", 5.0)
    response = await http.get(f"/api/v1/dag/runs/{run_id}/events")
    events = parse_sse(response.text)
    assert [(name, body["status"]) for name, body in events] == [("snapshot", "cancelled")]
    assert control.unwatched.is_set()
    assert (await http.get("/api/v1/dag/runs/run-nope/events")).status_code == 404


async def test_a_watch_the_control_cannot_open_ends_the_stream_saying_so(http, control):
    run_id = await publish_and_confirm(http)
    control.broken = True
    response = await http.get(f"/api/v1/dag/runs/{run_id}/events")
    assert response.status_code == 200
    ((name, body),) = parse_sse(response.text)
    assert name == "unavailable" and "retry" in body["message"]


# -- fuzzing: client input never causes a 500 -------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_documents = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode(), _json),
    st.builds(lambda v: json.dumps({"dag_id": "d", "tasks": v}).encode(), _json),
    st.builds(lambda t: DIAMOND.replace("start", t).encode("utf-8", "surrogatepass"), st.text(max_size=30)),
)


@settings(max_examples=80, deadline=None)
@given(
    body=_documents,
    content_type=st.sampled_from(["application/json", "application/toml", "text/plain", ""]),
    path=st.sampled_from(["/api/v1/dag/publish", "/api/v1/dag/diamond/confirm", "/api/v1/dag/runs/x/pause"]),
)
def test_no_publish_or_confirm_gets_a_500(body, content_type, path):
    store = open_dag_store(":memory:")
    control = FakeControl(store)
    config = NodeConfig(clients=(ApiClient("gateway", hashlib.sha256(TOKEN.encode()).hexdigest(), frozenset({"dag"})),))
    facts = lambda: Facts(now=0, last_sync_at=0, sync_timeout_s=30, store_writable=True, agents={}, outbox_depth=0)  # noqa: E731
    app = build_app(NodeApi(config, NodeMetrics(), facts, routes=dag_routes(control, store)))

    async def one() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            if content_type:
                headers["Content-Type"] = content_type
            await client.post("/api/v1/dag/publish", content=DIAMOND, headers={**headers, **TOML})
            response = await client.post(path, content=body, headers=headers)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert set(response.json()) >= {"error", "message"}

    try:
        trio.run(one)
    finally:
        store.close()
