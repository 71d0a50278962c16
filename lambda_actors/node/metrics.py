"""The node's Prometheus metrics, on a registry the node owns.

Never the process-global registry: a program embedding two nodes (the tests
do) gets two independent sets of numbers, and nothing a library registers
globally leaks into ours. Every family is prefixed ``lambda_`` and no label
holds a user id (SPEC 7.3): labels are closed sets (kinds, states, routes,
status codes), so a hostile caller cannot grow the exposition.

Some numbers are counted as things happen (``NodeMetrics.http_requests``);
the rest are read when Prometheus scrapes (:class:`NodeCollector`), from the
tree and the store, so they are never out of date and cost nothing between
scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["NodeMetrics", "Snapshot"]


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

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the snapshot; collect() at registration would call into the node


class NodeMetrics:
    """One node's metrics: its own registry, its counters, its scrape-time view."""

    def __init__(self, snapshot: Callable[[], Snapshot] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
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
