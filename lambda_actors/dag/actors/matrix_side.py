"""The Matrix side of DAG runs on a node (SPEC 8.1, 8.2): what the node tree starts.

Stub: the signatures the run actors wire against; the actors follow.
"""

from __future__ import annotations

from ...bot.actors.services import BotServices
from ...node.config import NodeConfig
from ...runtime.registry import Registry
from ...runtime.spec import ChildSpec
from ..store import DagStore

__all__ = ["matrix_children", "poke_broadcaster", "BROADCAST_PATH", "HEARTBEAT_PATH"]

#: Where the node tree runs the broadcaster and the heartbeat actor.
BROADCAST_PATH = "node/dag-broadcast"
HEARTBEAT_PATH = "node/dag-heartbeat"


def matrix_children(bot: BotServices, dag_store: DagStore, node_config: NodeConfig) -> list[ChildSpec]:
    """The actors posting a node's DAG status and heartbeats to Matrix (start them under ``node``)."""
    return []


def poke_broadcaster(registry: Registry) -> None:
    """Tell the broadcaster that status events were written to the store's outbox.

    Never blocks and never raises: the store is the queue, so a poke lost
    (broadcaster restarting, mailbox full) only delays a send until its next
    look at the store.
    """
    return None
