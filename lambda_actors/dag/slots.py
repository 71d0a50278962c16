"""Which ready tasks may start now: the node's slots shared by its runs (SPEC 8 "Workers").

A node runs at most ``[dag.local] max_workers`` tasks at once, and each run at
most its own ``max_workers``. When there are more ready tasks than free
slots, tasks of higher-priority runs start first, and within one priority
the task that has been ready longest starts first (ties in the order the
runs are given, then each run's own order).

:func:`allocate` is a pure function of what the runs report right now (how
many slots each holds, which tasks it has ready): it keeps no state, so it
can never drift from the schedulers it serves. A task that is running or
blocked holds its slot (a blocked task keeps its agent session open while
its owner decides).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .spec import Priority

__all__ = ["Grant", "Ready", "RunDemand", "allocate"]


@dataclass(frozen=True)
class Ready:
    """A task whose deps completed and that waits for a slot."""

    task_id: str
    ready_at: float  #: when it became ready (the caller's monotonic clock)
    seq: int  #: the run's own order of readiness, for equal times


@dataclass(frozen=True)
class RunDemand:
    """One run as the allocator sees it."""

    run_id: str
    priority: Priority
    max_workers: int | None  #: None: only the node's limit applies
    holding: int  #: tasks of the run that are running or blocked
    ready: Sequence[Ready]  #: in the run's order of readiness


@dataclass(frozen=True)
class Grant:
    """Start this task now."""

    run_id: str
    task_id: str


def allocate(node_slots: int | None, runs: Iterable[RunDemand]) -> list[Grant]:
    """The tasks to start now, in the order to start them.

    ``node_slots`` is the node's limit (None: no limit). A run already over a
    limit (the node's limit was lowered, say) is simply given nothing.
    """
    runs = list(runs)
    free = None if node_slots is None else node_slots - sum(run.holding for run in runs)
    if free is not None and free <= 0:
        return []
    candidates: list[tuple[int, float, int, int, Grant]] = []
    for order, run in enumerate(runs):
        room = len(run.ready) if run.max_workers is None else run.max_workers - run.holding
        # A run can take at most ``room`` slots, so only its first ``room``
        # ready tasks compete; the rest of its queue cannot win anyway.
        for ready in sorted(run.ready, key=lambda r: (r.ready_at, r.seq))[: max(room, 0)]:
            candidates.append((-run.priority.rank, ready.ready_at, order, ready.seq, Grant(run.run_id, ready.task_id)))
    candidates.sort(key=lambda c: c[:4])
    chosen = candidates if free is None else candidates[:free]
    return [c[4] for c in chosen]
