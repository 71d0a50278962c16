"""The /metrics families of SPEC 7.3 (node/metrics.py): each counted where
its data passes (the sync actor, the outbox, a connection's turn, the Matrix
client's retry loop, the tree and the stores at scrape time), every family
prefixed ``lambda_``, every label from a closed set.

No homeserver: the outbox runs as a real actor with a stand-in send
endpoint; the 429 counting runs the real retry loop on a stand-in request
(the real 429 from Synapse is asserted in tests/matrix/test_matrix_ratelimit.py).
"""

from __future__ import annotations

import functools
import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import lambda_actors as la
from lambda_actors.approvals.agent import confirmation_record
from lambda_actors.approvals.messages import Confirm
from lambda_actors.approvals.record import Status, Via, decide
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.actors.outbox import count_sent, outbox_actor, tell_outbox
from lambda_actors.bot.actors.services import DONE_KEY, ERROR_KEY, ERROR_KINDS, SOURCE_KEY, BotServices
from lambda_actors.bot.actors.sync import count_received
from lambda_actors.bot.config import AgentsConfig
from lambda_actors.bot.store import OutboxItem, Store
from lambda_actors.dag.spec import parse_dag
from lambda_actors.dag.store import open_dag_store
from lambda_actors.matrix.errors import MatrixError, RateLimited
from lambda_actors.matrix.retry import RetryPolicy, call_with_retries
from lambda_actors.node.metrics import (
    APPROVAL_STATUSES,
    DAG_TASK_STATUSES,
    MESSAGE_KINDS,
    SEND_RESULTS,
    BotCounters,
    NodeMetrics,
    Snapshot,
    message_kind,
)

BOT = "@bot:x"


def scrape(metrics: NodeMetrics) -> dict[str, Any]:
    """The exposition as prometheus parses it: family name -> family."""
    body, _ = metrics.render(None)
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def value(metrics: NodeMetrics, sample_name: str, **labels: str) -> float:
    for family in scrape(metrics).values():
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {sample_name}{labels}")


def snapshot(**changes: Any) -> Snapshot:
    base: dict[str, Any] = dict(agent_states={}, actor_restarts=0, actor_parks=0, outbox_depth=0, sync_lag_s=None)
    return Snapshot(**{**base, **changes})


# -- messages received (the sync actor) --------------------------------------------------------


def test_a_received_event_is_counted_by_a_kind_from_a_closed_set():
    assert message_kind({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}}) == "text"
    assert message_kind({"type": "m.room.message", "content": {"msgtype": "m.image"}}) == "file"
    assert message_kind({"type": "m.reaction"}) == "reaction"
    assert message_kind({"type": "org.lambda.invite"}) == "invite"
    for odd in ({"type": "@alice:x"}, {"type": None}, {}, {"type": "m.room.message", "content": "x"}):
        assert message_kind(odd) in MESSAGE_KINDS


def test_the_sync_actor_counts_each_users_event_once_and_never_its_own_or_old_history(tmp_path):
    store = Store.open(tmp_path / "bot.sqlite3")
    bot = BotServices(store, client=None, agents=AgentsConfig(agents=()), user_id=BOT)  # type: ignore[arg-type]
    metrics = NodeMetrics(counters=bot.counters)
    text = {"type": "m.room.message", "sender": "@alice:x", "content": {"msgtype": "m.text", "body": "hi"}}
    batch = [
        ("$1", "!r:x", text, False),
        ("$2", "!r:x", {**text, "content": {"msgtype": "m.file"}}, False),
        ("$3", "!r:x", {**text, "sender": BOT}, False),  # our own answer
        ("$4", "!r:x", text, True),  # history before our last answer, on a first sync
    ]
    count_received(bot, batch)
    store.ingest(batch, "s1")
    # The next sync (or a history page) repeats $1: it is not received again.
    again = [("$1", "!r:x", text, False), ("$5", "!r:x", {"type": "m.reaction", "sender": "@alice:x"}, False)]
    count_received(bot, again)
    store.ingest(again, "s2")
    received = {k: value(metrics, "lambda_messages_received_total", kind=k) for k in MESSAGE_KINDS}
    assert received == {"text": 1, "file": 1, "reaction": 1, "invite": 0, "other": 0}
    store.close()


# -- answers, errors and sends (the outbox) ----------------------------------------------------


def test_a_done_send_is_an_answer_and_one_carrying_an_error_is_counted_by_its_kind():
    counters = BotCounters()
    metrics = NodeMetrics(counters=counters)
    count_sent(counters, {"body": "part 1", SOURCE_KEY: "$m"})  # mid-answer: neither
    count_sent(counters, {"body": "done", SOURCE_KEY: "$m", DONE_KEY: True})
    count_sent(counters, {"body": "⚠", DONE_KEY: True, ERROR_KEY: "agent_failed"})
    count_sent(counters, {"body": "⚠", ERROR_KEY: "file"})  # a refused file, the answer goes on
    count_sent(counters, {"body": "⚠", ERROR_KEY: "@alice:x's own kind"})  # never a label of its own
    assert value(metrics, "lambda_answers_total") == 1
    errors = scrape(metrics)["lambda_errors"]
    assert {s.labels["kind"]: s.value for s in errors.samples if s.name.endswith("_total")} == {
        "agent_failed": 1, "file": 1, "other": 1
    }


class Homeserver:
    """The send endpoint: answers an event id, refuses bodies saying so (4xx), fails the first 5xx."""

    def __init__(self) -> None:
        self.fail_next = 1
        self.sent: list[str] = []

    async def send(self, room_id: str, event_type: str, content: dict, txn_id: str) -> str:
        if content.get("body") == "refuse":
            raise MatrixError(413, "M_TOO_LARGE", "too large")
        if content.get("body") == "flaky" and self.fail_next:
            self.fail_next -= 1
            raise MatrixError(502, "M_UNKNOWN", "bad gateway")
        self.sent.append(txn_id)
        return f"$ev-{txn_id}"


async def test_the_outbox_counts_every_send_by_its_result(autojump_clock, tmp_path):
    store = Store.open(tmp_path / "bot.sqlite3")
    counters = BotCounters()
    metrics = NodeMetrics(counters=counters)
    homeserver = Homeserver()
    spec = la.ChildSpec("outbox", functools.partial(outbox_actor, rescan_interval=1.0), args=(store, homeserver, counters))
    rows = [
        OutboxItem(0, "answer", "!r:x", "m.room.message", {"body": "hi", SOURCE_KEY: "$m", DONE_KEY: True}),
        OutboxItem(0, "big", "!r:x", "m.room.message", {"body": "refuse"}),
        OutboxItem(0, "flaky", "!r:x", "m.room.message", {"body": "flaky"}),
        OutboxItem(0, "orphan-edit", "!r:x", "m.room.message", {"body": "x"}, replaces_txn="never-sent"),
    ]
    async with la.open_supervisor("node", [spec]) as sup:
        await tell_outbox(SimpleNamespace(registry=sup.registry), store.enqueue(rows))
        with trio.fail_after(60):  # virtual time: fails only if it never happens
            while store.pending_sends():
                await trio.sleep(0.1)
    results = {r: value(metrics, "lambda_matrix_sends_total", result=r) for r in SEND_RESULTS}
    # The 5xx crashed the outbox (counted as failed); its restart sent the row.
    assert results == {"sent": 2, "refused": 1, "skipped": 1, "failed": 1}
    assert value(metrics, "lambda_answers_total") == 1
    store.close()


# -- turn latency ---------------------------------------------------------------------------


def test_turn_latency_families_are_histograms_in_seconds():
    counters = BotCounters()
    metrics = NodeMetrics(counters=counters)
    counters.turn_first_token.observe(0.3)
    counters.turn_duration.observe(4.0)
    assert value(metrics, "lambda_turn_first_token_seconds_count") == 1
    assert value(metrics, "lambda_turn_first_token_seconds_bucket", le="0.5") == 1
    assert value(metrics, "lambda_turn_seconds_bucket", le="2.5") == 0
    assert value(metrics, "lambda_turn_seconds_sum") == 4.0


# -- 429s (the Matrix client's retry loop) -----------------------------------------------------


async def test_every_429_is_counted_waited_out_or_not(autojump_clock):
    seen: list[int] = []
    answers = iter([RateLimited(429, "M_LIMIT_EXCEEDED", "slow down", 2.0), "ok"])

    async def attempt() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = RetryPolicy(on_rate_limited=lambda: seen.append(1))
    assert await call_with_retries(policy, attempt, idempotent=True, what="PUT send", homeserver="hs") == "ok"
    impatient = RetryPolicy(max_rate_limit_wait_s=0.5, on_rate_limited=lambda: seen.append(1))
    answers = iter([RateLimited(429, "M_LIMIT_EXCEEDED", "slow down", 2.0)])
    with pytest.raises(RateLimited):
        await call_with_retries(impatient, attempt, idempotent=True, what="PUT send", homeserver="hs")
    assert len(seen) == 2


def test_the_429_count_is_exposed_from_the_snapshot():
    metrics = NodeMetrics(snapshot=lambda: snapshot(rate_limited=3))
    assert value(metrics, "lambda_matrix_rate_limited_total") == 3


# -- agent connections and approvals, at scrape time -------------------------------------------


def test_agent_connections_are_counted_by_state():
    metrics = NodeMetrics(snapshot=lambda: snapshot(connection_states={"running": 2, "backing_off": 1}))
    assert value(metrics, "lambda_agent_connections", state="running") == 2
    assert value(metrics, "lambda_agent_connections", state="backing_off") == 1


def test_approvals_are_counted_by_every_status_not_only_pending():
    store = ApprovalStore(sqlite3.connect(":memory:"))
    for n, status in enumerate(["pending", "pending", "approved", "expired"]):
        record = confirmation_record(Confirm(f"apr_{n}", "agent-0", "!r:x", "@alice:x", "rm", "", 60.0), now=0.0)
        store.create(record)
        if status == "approved":
            store.record_decision(decide(record, Status.APPROVED, Via.COMMAND, at=1.0, by="@alice:x"), now=1.0)
        elif status == "expired":
            store.record_decision(decide(record, Status.EXPIRED, Via.TIMEOUT, at=60.0), now=60.0)
    metrics = NodeMetrics(snapshot=lambda: snapshot(approvals=store.count_by_status(), pending_approvals=store.pending_count()))
    by_status = {s: value(metrics, "lambda_approvals", status=s) for s in APPROVAL_STATUSES}
    assert by_status == {"pending": 2, "approved": 1, "denied": 0, "expired": 1, "cancelled": 0}
    assert value(metrics, "lambda_approvals_pending") == 2


def test_dag_tasks_of_unfinished_runs_are_counted_by_every_status(tmp_path):
    store = open_dag_store(tmp_path / "bot.sqlite3")
    spec = parse_dag('dag_id = "d"\n[[tasks]]\nid = "a"\nagent = "agent-0"\nprompt = "p"\n'
                     '[[tasks]]\nid = "b"\ndeps = ["a"]\nagent = "agent-0"\nprompt = "q"\n', known_agents=None)
    store.publish(spec, "test", now=0.0)
    run_id = store.create_run(spec, now=0.0).run_id
    store.start_attempt(run_id, "a", now=1.0)
    metrics = NodeMetrics(snapshot=lambda: snapshot(dag_tasks={str(k): n for k, n in store.task_counts().items()}))
    by_status = {s: value(metrics, "lambda_dag_tasks", status=s) for s in DAG_TASK_STATUSES}
    assert by_status["running"] == 1 and by_status["pending"] == 1 and sum(by_status.values()) == 2
    assert set(DAG_TASK_STATUSES) == {"pending", "running", "completed", "failed", "blocked", "skipped", "cancelled"}
    store.close()


# -- the exposition as a whole -------------------------------------------------------------------


def test_every_family_is_prefixed_and_every_label_value_is_from_a_closed_set():
    counters = BotCounters()
    metrics = NodeMetrics(
        snapshot=lambda: snapshot(
            agent_states={"agent-0": "running"}, approvals={"pending": 1}, connection_states={"running": 1}, sync_lag_s=1.0
        ),
        counters=counters,
    )
    counters.received({"type": "m.room.message", "sender": "@alice:x", "room_id": "!secret:x"})
    count_sent(counters, {ERROR_KEY: "@mallory:x"})
    metrics.http_requests.labels("/metrics", "200").inc()
    closed = {
        "kind": set(MESSAGE_KINDS) | set(ERROR_KINDS) | {"other"},
        "result": set(SEND_RESULTS),
        "status": set(APPROVAL_STATUSES),
        "state": {"running", "backing_off", "parked", "not_started", "waiting", "stopping", "stopped"},
        "le": None,  # histogram buckets
        "route": None,  # route templates (node/api.py)
        "code": None,  # HTTP status codes
    }
    families = scrape(metrics)
    for expected in (
        "lambda_messages_received", "lambda_answers", "lambda_errors", "lambda_turn_first_token_seconds",
        "lambda_turn_seconds", "lambda_matrix_sends", "lambda_matrix_rate_limited", "lambda_agent_connections",
        "lambda_approvals", "lambda_agents", "lambda_outbox_depth", "lambda_sync_lag_seconds",
    ):
        assert expected in families, expected
    for name, family in families.items():
        assert name.startswith("lambda_"), name
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                assert label in closed, (name, label)
                allowed = closed[label]
                assert allowed is None or label_value in allowed, (name, label, label_value)
                assert "@" not in label_value and "!" not in label_value, (name, label_value)
