"""Which nodes are alive, as one observer decides it (SPEC 8.2, 8.3): deaths in seconds, none false.

A pure machine (:class:`Observer`: events and ``now`` in, actions out; no
I/O, no clock) fed from the heartbeat room: each node's ``cis.node.status``
(state key: the node id) and ``cis.node.heartbeat``, and the observer's own
sync with the homeserver. It says :class:`NodeDead` once per death and
:class:`NodeAlive` when a dead node returns; the coordinator reassigns a
dead node's tasks (:meth:`.cluster.ClusterRun.node_down`).

The rule:

- ``online`` or a heartbeat: the node is alive (a dead node is back).
- ``stopped`` (a clean stop): dead at once.
- ``offline`` (the homeserver's delayed event: the node stopped restarting
  it for 10 s): dead at once, **unless the homeserver itself was away**.
  A homeserver that restarts fires every overdue delayed ``offline`` as it
  starts, for nodes that are alive and only could not reach it. So when
  the observer's own sync failed and then resumed at ``back_at`` (the
  observer learns "the homeserver is back at t" from its sync resuming),
  an ``offline`` seen before ``back_at + grace`` only makes the node a
  *suspect*: it is confirmed dead at ``back_at + grace`` unless it has
  re-announced ``online`` (or sent a heartbeat) by then. A live node
  re-announces within one restart period (5 s) of the homeserver's
  return: its restart answers "not found" and it schedules and announces
  again (:class:`.heartbeat.Liveness`), hence ``grace`` = 10 s by default.
- Missed heartbeats, the fallback where delayed events are off: a node
  whose last heartbeat is more than ``missed`` intervals old is dead; after
  the homeserver was away, not before ``back_at + interval + grace`` (its
  beats sent while away were lost; the next comes within an interval).

Node moves are the table :data:`MOVES`; a move not there is a bug
(:class:`IllegalMove`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["MOVES", "IllegalMove", "NodeAlive", "NodeDead", "Observer", "ObserverAction"]

State = Literal["unknown", "alive", "suspect", "dead"]
MOVES: dict[str, frozenset[str]] = {
    "unknown": frozenset({"alive", "dead"}),
    "alive": frozenset({"suspect", "dead"}),
    "suspect": frozenset({"alive", "dead"}),
    "dead": frozenset({"alive"}),
}


class IllegalMove(Exception):
    def __init__(self, node_id: str, current: str, wanted: str) -> None:
        super().__init__(f"node {node_id}: cannot move from {current} to {wanted}")


@dataclass(frozen=True)
class NodeDead:
    node_id: str
    reason: str


@dataclass(frozen=True)
class NodeAlive:
    """A node declared dead is back (its stale tasks stop on their own: see ``cluster_worker``)."""

    node_id: str


ObserverAction = NodeDead | NodeAlive


@dataclass
class _Node:
    state: State = "unknown"
    last_beat: float | None = None
    confirm_at: float | None = None  #: a suspect's deadline


class Observer:
    """One node's view of every node's liveness; see the module's docstring."""

    def __init__(
        self,
        *,
        me: str | None = None,
        grace_s: float = 10.0,
        heartbeat_interval_s: float = 30.0,
        missed: int = 3,
    ) -> None:
        self.me = me
        self.grace_s = grace_s
        self.interval_s = heartbeat_interval_s
        self.missed = missed
        self.nodes: dict[str, _Node] = {}
        self._now = -math.inf
        self._away_since: float | None = None
        self._back_at: float | None = None
        #: Offline events that did not become deaths (the node re-announced in time).
        self.spared = 0

    def live(self) -> set[str]:
        """Nodes not dead (a suspect is still alive: its tasks stay where they are)."""
        return {n for n, node in self.nodes.items() if node.state in ("alive", "suspect")}

    def dead(self) -> set[str]:
        """Nodes declared dead (and not back)."""
        return {n for n, node in self.nodes.items() if node.state == "dead"}

    # -- inputs ---------------------------------------------------------------------------

    def status(self, node_id: str, status: str, now: float) -> list[ObserverAction]:
        """A ``cis.node.status`` of ``node_id`` (``online``, ``offline``, ``stopped``), in timeline order."""
        self._clock(now)
        if node_id == self.me:
            return []
        node = self.nodes.setdefault(node_id, _Node())
        if status == "online":
            return self._alive(node_id, node)
        if status == "stopped":
            return self._dead(node_id, node, "stopped cleanly")
        if status != "offline":
            return []  # hostile or unknown: says nothing
        if self._homeserver_was_away():
            if node.state == "alive":
                self._move(node_id, node, "suspect")
                node.confirm_at = self._confirm_time()
            return self._due()
        return self._dead(node_id, node, "offline (its delayed offline fired)")

    def heartbeat(self, node_id: str, now: float) -> list[ObserverAction]:
        self._clock(now)
        if node_id == self.me:
            return []
        node = self.nodes.setdefault(node_id, _Node())
        node.last_beat = self._now
        return self._alive(node_id, node)

    def sync_failed(self, now: float) -> list[ObserverAction]:
        """The observer's sync with the homeserver failed: the homeserver may be away."""
        self._clock(now)
        if self._away_since is None:
            self._away_since = self._now
        for node in self.nodes.values():
            if node.state == "suspect":
                # Away again before the suspect could re-announce: its grace
                # starts over when the homeserver is back.
                node.confirm_at = math.inf
        return []

    def sync_ok(self, now: float) -> list[ObserverAction]:
        """A sync succeeded (call it for every one; only the first after a failure counts)."""
        self._clock(now)
        if self._away_since is not None:
            self._away_since = None
            self._back_at = self._now
            for node in self.nodes.values():
                if node.state == "suspect":
                    node.confirm_at = self._confirm_time()
        return self._due()

    def tick(self, now: float) -> list[ObserverAction]:
        self._clock(now)
        return self._due()

    def next_due(self) -> float | None:
        times = [t for n in self.nodes.values() if (t := self._deadline(n)) is not None]
        return min(times, default=None)

    # -- decisions ----------------------------------------------------------------------------

    def _clock(self, now: float) -> None:
        self._now = max(self._now, now)

    def _move(self, node_id: str, node: _Node, state: State) -> None:
        if state not in MOVES[node.state]:
            raise IllegalMove(node_id, node.state, state)
        node.state = state

    def _homeserver_was_away(self) -> bool:
        if self._away_since is not None:
            return True
        return self._back_at is not None and self._now < self._back_at + self.grace_s

    def _confirm_time(self) -> float:
        # While the homeserver is still away the deadline waits for its return.
        return math.inf if self._away_since is not None else (self._back_at or self._now) + self.grace_s

    def _alive(self, node_id: str, node: _Node) -> list[ObserverAction]:
        was = node.state
        if was == "alive":
            return []
        if was == "suspect":
            self.spared += 1
        self._move(node_id, node, "alive")
        node.confirm_at = None
        return [NodeAlive(node_id)] if was == "dead" else []

    def _dead(self, node_id: str, node: _Node, reason: str) -> list[ObserverAction]:
        if node.state == "dead":
            return []
        was = node.state
        self._move(node_id, node, "dead")
        node.confirm_at = None
        # A node never seen alive had nothing to take over.
        return [NodeDead(node_id, reason)] if was != "unknown" else []

    def _deadline(self, node: _Node) -> float | None:
        if node.state == "suspect":
            return node.confirm_at if node.confirm_at is not None and node.confirm_at < math.inf else None
        if node.state != "alive" or node.last_beat is None or self._away_since is not None:
            return None
        deadline = node.last_beat + self.missed * self.interval_s
        if self._back_at is not None:
            deadline = max(deadline, self._back_at + self.interval_s + self.grace_s)
        return deadline

    def _due(self) -> list[ObserverAction]:
        actions: list[ObserverAction] = []
        for node_id, node in sorted(self.nodes.items()):
            deadline = self._deadline(node)
            if deadline is None or self._now < deadline:
                continue
            if node.state == "suspect":
                reason = f"offline, and not back {self.grace_s:g} s after the homeserver returned"
            else:
                reason = f"{self.missed} heartbeats missed"
            actions += self._dead(node_id, node, reason)
        return actions
