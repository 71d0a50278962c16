"""What DAG runs add to the node (SPEC section 8), as node/tree.py's NodeParts
adds the approvals: the ``node/dag`` subtree, the Matrix side in hybrid mode,
and the API's DAG routes.

::

    node
    └── dag                 supervisor (one_for_one)
        ├── runs            the coordinator (actors/coordinator.py)
        └── worker-<scope>  started on demand; runs and their task attempts

In modes ``matrix`` and ``federation`` (several nodes, SPEC 8.3) runs are
the cluster driver's instead (``node/dag-cluster``: actors/cluster_node.py):
``node/dag`` does not run (it would resume the runs the store holds as its
own, and run their tasks here), and the API's confirm and moves go to the
driver.

The DAG store is a connection of its own to the bot's database file (one
file to back up). In ``hybrid`` mode with ``[matrix.dag_broadcast]
enabled`` the Matrix side (status room, boards, heartbeats:
actors/matrix_side.py) joins the tree, and every write that appended status
events pokes its broadcaster. In ``local`` mode nothing of a run reaches
Matrix: the store and the API's event stream are the whole of it.
"""

from __future__ import annotations

import sqlite3

import trio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.routing import Route

from ..bot.actors.services import BotServices
from ..matrix.client import MatrixClient
from ..node.config import ExecutionMode, NodeConfig
from ..runtime.context import ActorContext
from ..runtime.spec import ChildSpec, SupervisorSpec
from .actors.control import NodeDagControl
from .actors.coordinator import COORDINATOR_MAILBOX, coordinator_actor
from .actors.gate import NodeGate
from .actors.cluster_brain import ClusterBrain
from .actors.matrix_side import BROADCAST_PATH, cluster_child, matrix_children, poke_broadcaster
from .actors.run import COORDINATOR
from .actors.services import DagServices, Gate
from .api import dag_routes
from .spec import KnownAgents
from .store import DagStore, open_dag_store

__all__ = ["DAG_PATH", "DagParts", "database_of"]

DAG_PATH = "node/dag"


def database_of(connection: sqlite3.Connection) -> Path:
    """The file an open SQLite connection uses (the bot's database)."""
    for _, name, file in connection.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file)
    raise ValueError("the connection has no database file (an in-memory database?)")


@dataclass
class DagParts:
    services: DagServices
    control: NodeDagControl
    bot: BotServices | None = None
    #: The cluster driver's brain once it has caught up (what /metrics reads; one per incarnation).
    brains: list[ClusterBrain] = field(default_factory=list)
    #: Set when the cluster driver has first caught up with the cluster room.
    cluster_ready: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def build(cls, bot: BotServices, node: NodeConfig) -> DagParts:
        """The node's DAG parts, on the bot's database file and agents."""
        assert bot.approvals is not None
        store = open_dag_store(database_of(bot.approvals.connection))
        directory = bot.agents

        def agent_url(agent_id: str) -> str | None:
            try:
                return directory.agent(agent_id).base_url
            except KeyError:
                return None

        parts = cls.local(store, node, agent_url, known_agents=lambda a: agent_url(a) is not None,
                          gate=NodeGate(bot, store))
        parts.bot = bot
        bot.counters.watch_cluster(parts.cluster_counts)
        return parts

    @classmethod
    def local(
        cls,
        store: DagStore,
        node: NodeConfig,
        agent_url: Callable[[str], str | None],
        *,
        known_agents: KnownAgents | None = None,
        gate: Gate | None = None,
    ) -> DagParts:
        """DAG parts on a given store and agents (tests, benchmarks: no bot)."""
        services = DagServices(store, node, agent_url, known_agents=known_agents, gate=gate)
        parts = cls(services, NodeDagControl(services, DAG_PATH))
        if parts.broadcasting:
            services.broadcasting = True
            services.poke = parts._poke
        return parts

    @property
    def broadcasting(self) -> bool:
        node = self.services.node
        return node.dag.execution_mode is ExecutionMode.HYBRID and node.dag_broadcast.enabled

    def cluster_counts(self) -> dict[str, int] | None:
        """``lambda_dag_cluster_*`` (None: this node runs no cluster driver)."""
        if not self.brains:
            return None
        counts = self.brains[-1].current_stats()
        return {
            "reassigned": counts.reassigned, "stale_results_ignored": counts.stale_results_ignored,
            "claims_lost": counts.claims_lost,
        }

    def children(self) -> list[ChildSpec | SupervisorSpec]:
        node = self.services.node
        if node.dag.clustered:
            # The cluster room is the runs' record: no status room (nothing
            # would be written to it), the heartbeats and the driver.
            matrix = matrix_children(self.bot, self.services.store, node) if self.bot is not None else []
            matrix = [c for c in matrix if c.name != BROADCAST_PATH.rsplit("/", 1)[1]]
            return [*matrix, *self.cluster_children(self.bot.client if self.bot is not None else None)]
        dag = SupervisorSpec(
            "dag", children=[ChildSpec(COORDINATOR, self._coordinator, mailbox_capacity=COORDINATOR_MAILBOX)]
        )
        matrix = matrix_children(self.bot, self.services.store, self.services.node) if self.bot is not None else []
        return [dag, *matrix]

    def cluster_children(self, client: MatrixClient | None, *, grace_s: float = 10.0) -> list[ChildSpec]:
        """``node/dag-cluster`` on ``client`` (the node's own Matrix account), in modes matrix and federation."""
        if client is None or not self.services.node.dag.clustered:
            return []
        return [cluster_child(client, self.services, self.services.node, on_ready=self._cluster_ready, grace_s=grace_s)]

    def _cluster_ready(self, brain: ClusterBrain) -> None:
        self.brains.append(brain)
        self.cluster_ready.set()

    def routes(self) -> list[Route]:
        return dag_routes(self.control, self.services.store)

    def close(self) -> None:
        self.services.store.close()

    async def _coordinator(self, ctx: ActorContext) -> None:
        await coordinator_actor(ctx, self.services)

    def _poke(self) -> None:
        registry = self.services.registry
        if registry is not None:
            poke_broadcaster(registry)  # never waits (its contract)
