"""The node's Prometheus metrics, on a registry the node owns.

Never the process-global registry: a program embedding two nodes (the tests
do) gets two independent sets of numbers, and nothing a library registers
globally leaks into ours. Every family is prefixed ``lambda_`` and no label
holds a user id (SPEC 7.3): labels are closed sets (kinds, states, routes,
status codes), so a hostile caller cannot grow the exposition.

Some numbers are counted as things happen: ``NodeMetrics.http_requests``,
and :class:`BotCounters`, counted where the data already passes (the sync
actor sees every message received, the outbox every send with its content
and result, a connection each turn's first output and end). The rest are
read when Prometheus scrapes (:class:`NodeCollector`), from the tree, the
stores and the Matrix client, so they are never out of date and cost nothing
between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..dag.scheduler import TaskStatus

__all__ = ["APPROVAL_STATUSES", "DAG_TASK_STATUSES", "BotCounters", "NodeMetrics", "SEND_RESULTS", "Snapshot", "message_kind"]

#: Every label value is from a closed set (SPEC 7.3: no user or room ids).
MESSAGE_KINDS = ("text", "file", "reaction", "invite", "other")
SEND_RESULTS = ("sent", "refused", "skipped", "failed")
APPROVAL_STATUSES = ("pending", "approved", "denied", "expired", "cancelled")
DAG_TASK_STATUSES = tuple(str(status) for status in TaskStatus)
#: Seconds: an agent's first token comes in well under a second or after
#: minutes of tool use; the buckets cover both.
_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FILE_MSGTYPES = frozenset({"m.file", "m.image", "m.audio", "m.video"})


def message_kind(event: dict[str, Any]) -> str:
    """The label a received Matrix event is counted under (raw event, as stored)."""
    kind = event.get("type")
    if kind == "m.room.message":
        content = event.get("content")
        msgtype = content.get("msgtype") if isinstance(content, dict) else None
        return "file" if msgtype in _FILE_MSGTYPES else "text"
    if kind == "m.reaction":
        return "reaction"
    if kind == "org.lambda.invite":
        return "invite"
    return "other"


class BotCounters:
    """What the bot's actors count as it happens (reachable as ``BotServices.counters``).

    Made on a private registry of its own; :class:`NodeMetrics` exposes that
    registry as part of the node's, so a bot embedded without a node (tests)
    counts into nothing anyone reads, and two nodes never share numbers.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.messages_received = Counter(
            "lambda_messages_received", "Events from users stored for the rooms, by kind", ["kind"], registry=r
        )
        self.answers = Counter(
            "lambda_answers", "User messages whose answer (or reply) was completed without an error", registry=r
        )
        self.errors = Counter(
            "lambda_errors", "Error notices sent to users, by kind (org.lambda.error)", ["kind"], registry=r
        )
        self.turn_first_token = Histogram(
            "lambda_turn_first_token_seconds", "From a message handed to its agent to the first output shown",
            buckets=_TURN_BUCKETS, registry=r,
        )
        self.turn_duration = Histogram(
            "lambda_turn_seconds", "From a message handed to its agent to the end of its answer",
            buckets=_TURN_BUCKETS, registry=r,
        )
        self.sends = Counter("lambda_matrix_sends", "Outbox sends to the homeserver, by result", ["result"], registry=r)
        for kind in MESSAGE_KINDS:
            self.messages_received.labels(kind)
        for result in SEND_RESULTS:
            self.sends.labels(result)

    def watch_cluster(self, counts: Callable[[], dict[str, int] | None]) -> None:
        """Scrape ``lambda_dag_cluster_*`` (several nodes, SPEC 8.3) from ``counts``
        (None: the node runs no cluster driver, and they are not shown)."""
        self.registry.register(_ClusterCollector(counts))

    def received(self, event: dict[str, Any]) -> None:
        self.messages_received.labels(message_kind(event)).inc()

    def error(self, kind: object, known: frozenset[str]) -> None:
        """An error notice of ``kind``; a kind outside ``known`` is counted as ``other``."""
        self.errors.labels(kind if isinstance(kind, str) and kind in known else "other").inc()


@dataclass(frozen=True)
class Snapshot:
    """What the node is doing now, read at scrape time."""

    #: agent id -> state name ("running", "backing_off", "parked", ...).
    agent_states: dict[str, str]
    actor_restarts: int
    actor_parks: int
    outbox_depth: int
    sync_lag_s: float | None
    pending_approvals: int = 0
    #: status -> records (:data:`APPROVAL_STATUSES`).
    approvals: dict[str, int] | None = None
    #: supervision state -> agent connection actors (one per open chat).
    connection_states: dict[str, int] | None = None
    #: 429 answers the Matrix client got since it was made.
    rate_limited: int = 0
    #: status -> tasks of the DAG runs not finished yet (None: the node runs no DAGs).
    dag_tasks: dict[str, int] | None = None


#: ``lambda_dag_cluster_<key>``: what each count is.
CLUSTER_COUNTS = {
    "reassigned": "Tasks given to another node because theirs was declared dead",
    "stale_results_ignored": "Results of an older epoch than their task's, ignored",
    "claims_lost": "Claims of this node that another node's claim beat",
}


class _ClusterCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int] | None]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        now = self._counts()
        if now is None:
            return
        for key, text in CLUSTER_COUNTS.items():
            yield CounterMetricFamily(f"lambda_dag_cluster_{key}", text, value=now.get(key, 0))

    def describe(self) -> Iterable[Metric]:
        return []


class NodeCollector(Collector):
    """Turns a :class:`Snapshot` into metric families at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        now = self._snapshot()
        states = GaugeMetricFamily("lambda_agents", "Configured agents by supervision state", labels=["state"])
        counts: dict[str, int] = {}
        for state in now.agent_states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        yield CounterMetricFamily("lambda_actor_restarts", "Actor restarts since the node started", value=now.actor_restarts)
        yield CounterMetricFamily("lambda_actor_parks", "Actors parked since the node started", value=now.actor_parks)
        yield GaugeMetricFamily("lambda_outbox_depth", "Matrix sends waiting in the outbox", value=now.outbox_depth)
        if now.sync_lag_s is not None:
            yield GaugeMetricFamily("lambda_sync_lag_seconds", "Seconds since /sync last answered", value=now.sync_lag_s)
        yield GaugeMetricFamily(
            "lambda_approvals_pending", "Approval requests waiting for a decision", value=now.pending_approvals
        )
        if now.approvals is not None:
            approvals = GaugeMetricFamily("lambda_approvals", "Approval records by status", labels=["status"])
            for status in APPROVAL_STATUSES:
                approvals.add_metric([status], now.approvals.get(status, 0))
            yield approvals
        if now.connection_states is not None:
            connections = GaugeMetricFamily(
                "lambda_agent_connections", "Agent connection actors (one per chat in use) by state", labels=["state"]
            )
            for state, n in sorted(now.connection_states.items()):
                connections.add_metric([state], n)
            yield connections
        yield CounterMetricFamily(
            "lambda_matrix_rate_limited", "429 (M_LIMIT_EXCEEDED) answers from the homeserver", value=now.rate_limited
        )
        if now.dag_tasks is not None:
            tasks = GaugeMetricFamily("lambda_dag_tasks", "Tasks of the DAG runs not finished yet, by status", labels=["status"])
            for status in DAG_TASK_STATUSES:
                tasks.add_metric([status], now.dag_tasks.get(status, 0))
            yield tasks

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the snapshot; collect() at registration would call into the node


class NodeMetrics:
    """One node's metrics: its own registry, its counters, its scrape-time view."""

    def __init__(self, snapshot: Callable[[], Snapshot] | None = None, counters: BotCounters | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if counters is not None:
            # A registry is a collector: the bot's counters are scraped with ours.
            self.registry.register(counters.registry)
        self.http_requests = Counter(
            "lambda_http_requests",
            "HTTP API requests by route template and status code",
            ["route", "code"],
            registry=self.registry,
        )
        if snapshot is not None:
            self.watch(snapshot)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read ``snapshot`` at every scrape for the node's state families."""
        self.registry.register(NodeCollector(snapshot))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from ``Accept``
        the way prometheus_client's own handler does."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
