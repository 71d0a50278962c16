"""The Matrix side of DAG runs on a node (SPEC 8.1, 8.2): what the node tree starts.

::

    node
    ├── dag-broadcast   the status room: the store's status outbox, batched, and each run's board
    ├── dag-heartbeat   the heartbeat room: heartbeats and liveness (delayed ``offline``)
    └── dag-cluster     modes matrix and federation: the cluster room (actors/cluster_node.py)

Neither of the first two runs in ``local`` mode (no Matrix at all), and each
only when node.toml's ``[matrix.dag_broadcast]`` / ``[matrix.node_heartbeat]``
enables it; ``dag-cluster`` runs in modes ``matrix`` and ``federation``
(:func:`cluster_child`), after the heartbeat actor. The run actors never wait on either: they write status events to the
store and :func:`poke_broadcaster`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...bot.actors.services import BotServices
from ...cli import version
from ...matrix.client import MatrixClient
from ...node.config import ExecutionMode, NodeConfig
from ...runtime.registry import Registry
from ...runtime.spec import ChildSpec
from ..store import DagStore
from .broadcast import broadcaster_actor, poke
from .cluster_brain import ClusterBrain
from .cluster_node import CLUSTER_MAILBOX, CLUSTER_PATH, cluster_node_actor
from .heartbeats import heartbeat_actor
from .services import DagServices

__all__ = ["BROADCAST_PATH", "CLUSTER_PATH", "HEARTBEAT_PATH", "cluster_child", "matrix_children", "poke_broadcaster"]

#: Where the node tree runs the broadcaster and the heartbeat actor.
BROADCAST_PATH = "node/dag-broadcast"
HEARTBEAT_PATH = "node/dag-heartbeat"
#: A clean stop writes ``stopped`` (a homeserver call or two): time for it.
HEARTBEAT_SHUTDOWN_S = 10.0


def matrix_children(bot: BotServices, dag_store: DagStore, node_config: NodeConfig) -> list[ChildSpec]:
    """The actors posting a node's DAG status and heartbeats to Matrix (start them under ``node``)."""
    if node_config.dag.execution_mode is ExecutionMode.LOCAL:
        return []
    server = bot.user_id.split(":", 1)[1]
    node_id = node_config.node_id
    children = []
    broadcast = node_config.dag_broadcast
    if broadcast.enabled:

        async def broadcaster(ctx: Any) -> None:
            await broadcaster_actor(
                ctx, bot.client, dag_store, broadcast.room_for(node_id, server), node_id=node_id,
                batch_interval_ms=broadcast.batch_interval_ms, broadcast_output=broadcast.broadcast_output,
            )

        children.append(ChildSpec(BROADCAST_PATH.rsplit("/", 1)[1], broadcaster))
    heartbeat = node_config.node_heartbeat
    if heartbeat.enabled:

        async def heartbeats(ctx: Any) -> None:
            await heartbeat_actor(
                ctx, bot.client, dag_store, heartbeat.room_for(server), node_id,
                agents=lambda: [agent.id for agent in bot.agents.agents],
                max_workers=node_config.dag.local.max_workers, version=version(),
                interval_secs=heartbeat.interval_secs, include_resources=heartbeat.include_resources,
            )

        children.append(ChildSpec(HEARTBEAT_PATH.rsplit("/", 1)[1], heartbeats, shutdown=HEARTBEAT_SHUTDOWN_S))
    return children


def cluster_child(
    client: MatrixClient, services: DagServices, node_config: NodeConfig, *,
    on_ready: Callable[[ClusterBrain], None] | None = None, grace_s: float = 10.0,
) -> ChildSpec:
    """``node/dag-cluster`` (modes ``matrix`` and ``federation``), on the node's own Matrix account."""
    server = client.server_name

    async def driver(ctx: Any) -> None:
        await cluster_node_actor(
            ctx, client, services, node_config,
            heartbeat_room=node_config.node_heartbeat.room_for(server),
            cluster_room=node_config.dag.cluster.room_for(server), grace_s=grace_s, on_ready=on_ready,
        )

    return ChildSpec(CLUSTER_PATH.rsplit("/", 1)[1], driver, mailbox_capacity=CLUSTER_MAILBOX)


def poke_broadcaster(registry: Registry) -> None:
    """Tell the broadcaster that status events were written to the store's outbox.

    Never blocks and never raises (see :func:`.broadcast.poke`): the store is
    the queue, so a poke lost (broadcaster restarting, mailbox full) only
    delays a send until its next look at the store.
    """
    poke(registry)

