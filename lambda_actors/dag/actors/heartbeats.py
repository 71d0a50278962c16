"""The heartbeat actor: this node's heartbeats and liveness in its heartbeat room (SPEC 8.2).

A thin actor around :func:`~lambda_actors.dag.heartbeat.keep_alive` (the
driver of the pure liveness machine): it finds or creates the room, runs
the driver as a task, and when the supervisor stops it (its mailbox ends)
asks the driver for the clean stop, which cancels the delayed ``offline``
and writes ``stopped``. Cancelled instead (a kill, a shutdown that ran
out of time), it writes nothing, as a death would: the homeserver's delayed
``offline`` says it.

Resources are read from the OS without a dependency: CPU as the one-minute
load average over the CPU count, memory from ``/proc/meminfo`` (0 where
there is none), active sessions as the tasks running or blocked now.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from ...matrix.client import MatrixClient
from ..heartbeat import NODE_STATUS, ActiveRun, Liveness, dag_active_content, heartbeat_content, keep_alive
from ..status import Progress
from ..store import DagStore, TaskStatus
from .rooms import ensure_room_patiently, unless_stopped

__all__ = ["HEARTBEAT_PATH", "active_runs", "cpu_percent", "heartbeat_actor", "memory_percent"]

#: Where the node tree runs the heartbeat actor.
HEARTBEAT_PATH = "node/dag-heartbeat"
#: The heartbeat room's power levels: every node (each with its own account,
#: at level 0) writes its own ``cis.node.status`` state event; the room's
#: own settings keep Synapse's defaults.
HEARTBEAT_ROOM_POWER = {
    "events": {
        NODE_STATUS: 0,
        "m.room.name": 50, "m.room.avatar": 50, "m.room.canonical_alias": 50, "m.room.topic": 50,
        "m.room.power_levels": 100, "m.room.history_visibility": 100, "m.room.tombstone": 100,
        "m.room.server_acl": 100, "m.room.encryption": 100,
    }
}
#: ``cis.node.dag.active`` lists at most this many runs (the event stays small).
MAX_ACTIVE_RUNS = 100


def cpu_percent() -> int:
    """The machine's load as a whole percentage of its CPUs (one-minute average, capped at 100)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0
    return max(0, min(100, round(100 * load / (os.cpu_count() or 1))))


def memory_percent(meminfo: str = "/proc/meminfo") -> int:
    """Memory in use as a whole percentage (0 where ``/proc/meminfo`` is missing)."""
    try:
        with open(meminfo, encoding="ascii") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f if len(line.split()) >= 2}
        total, available = fields["MemTotal"], fields["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 0
    return max(0, min(100, round(100 * (total - available) / total))) if total else 0


def active_runs(dag_store: DagStore) -> list[ActiveRun]:
    """The runs this node has not finished, for ``cis.node.dag.active``."""
    return [
        ActiveRun(run.run_id, run.dag_id, Progress(**dag_store.progress(run.run_id)), str(run.status))
        for run in dag_store.unfinished_runs()[:MAX_ACTIVE_RUNS]
    ]


async def heartbeat_actor(
    ctx: Any,
    client: MatrixClient,
    dag_store: DagStore,
    room: str,
    node_id: str,
    *,
    agents: Callable[[], Sequence[str]] = tuple,
    max_workers: int = 4,
    version: str = "",
    did: str | None = None,
    interval_secs: float = 30.0,
    include_resources: bool = True,
    delay_ms: int = 10_000,
    restart_every_s: float = 5.0,
) -> None:
    """Keep ``node_id``'s heartbeats and liveness in ``room`` (an alias or id) until stopped."""
    # Other nodes of the network post here too (each with its own account),
    # so the room is created joinable (not listed in the directory).
    started, room_id = await unless_stopped(
        ctx,
        lambda: ensure_room_patiently(
            client, room, ctx.log, name="Node heartbeats", topic="Liveness of the nodes", preset="public_chat",
            power_levels=HEARTBEAT_ROOM_POWER,
        ),
    )
    if not started or room_id is None:
        return

    def beat() -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        now = datetime.now(UTC)
        counts = dag_store.task_counts()
        sessions = counts.get(TaskStatus.RUNNING, 0) + counts.get(TaskStatus.BLOCKED, 0)
        runs = active_runs(dag_store)
        busy = counts.get(TaskStatus.RUNNING, 0) >= max_workers
        content = heartbeat_content(
            node_id,
            did,
            "busy" if busy else "online",
            agents=list(agents()),
            max_workers=max_workers,
            version=version,
            cpu_percent=cpu_percent() if include_resources else 0,
            memory_percent=memory_percent() if include_resources else 0,
            active_sessions=sessions,
            at=now,
        )
        return content, dag_active_content(node_id, runs, at=now)

    machine = Liveness(delay_ms=delay_ms, restart_every_s=restart_every_s, heartbeat_every_s=interval_secs)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_alive(client, room_id, node_id, machine, heartbeat=beat, stop=stop))
        async for _ in ctx.mailbox:
            pass  # nothing is asked of it; the mailbox ends when the node stops it
        # A clean stop: the driver cancels the delayed offline and writes
        # `stopped` (shielded, bounded by its request timeout), then returns.
        stop.set()
