"""``/healthz``: is this node doing its job? A pure judgement of a few facts.

The facts are gathered by the HTTP layer (from the tree, the store and the
sync actor); the verdict is made here, with no I/O and no clock of its own,
so every rule is a unit test:

- **down** when the node cannot take in work: /sync has not answered within
  twice its long-poll timeout, or the store cannot be written;
- **degraded** when it takes in work but some of it cannot be served: an
  agent is parked, or the outbox holds more than ``outbox_warn`` sends;
- **ok** otherwise. A node still starting (no sync yet) is ``down`` until
  its first sync answers: a load balancer should not send it work before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AgentHealth", "Facts", "assess"]


@dataclass(frozen=True)
class AgentHealth:
    state: str  #: "running", "backing_off", "parked", "not_started", ...
    retry_at: str | None = None  #: ISO time of the next try when parked or backing off


@dataclass(frozen=True)
class Facts:
    now: float
    #: When /sync last answered (same clock as ``now``), None before the first.
    last_sync_at: float | None
    sync_timeout_s: float
    store_writable: bool
    agents: dict[str, AgentHealth]
    outbox_depth: int
    pending_approvals: int = 0
    active_dag_runs: int = 0
    outbox_warn: int = 1000


def assess(facts: Facts) -> tuple[str, dict[str, Any]]:
    """``(status, checks)`` with status ``ok`` | ``degraded`` | ``down``."""
    sync_age = None if facts.last_sync_at is None else max(0.0, facts.now - facts.last_sync_at)
    sync_ok = sync_age is not None and sync_age <= 2 * facts.sync_timeout_s
    parked = sorted(name for name, agent in facts.agents.items() if agent.state == "parked")
    checks: dict[str, Any] = {
        "sync": {"ok": sync_ok, "seconds_since_answer": None if sync_age is None else round(sync_age, 3)},
        "store": {"ok": facts.store_writable},
        "agents": {
            name: {"state": agent.state, **({"retry_at": agent.retry_at} if agent.retry_at else {})}
            for name, agent in sorted(facts.agents.items())
        },
        "outbox_depth": facts.outbox_depth,
        "pending_approvals": facts.pending_approvals,
        "active_dag_runs": facts.active_dag_runs,
    }
    if not sync_ok or not facts.store_writable:
        return "down", checks
    if parked or facts.outbox_depth > facts.outbox_warn:
        return "degraded", checks
    return "ok", checks
