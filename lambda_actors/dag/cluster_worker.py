"""The worker's side of several nodes (SPEC 8.3): which tasks to claim, run, stop.

A pure machine (events in, actions out; no I/O, no clock) over the same
:class:`~.cluster.Ledger` every node folds from a run's room, so what it
decides agrees with the coordinator:

- **Claiming.** An offer (mode ``matrix``) is claimed when the node accepts
  remote tasks and has a free slot (slots reserved by claims in flight
  count as taken); an assignment to this node (mode ``federation``) is
  claimed always: the coordinator chose it. The task runs once the claim
  is the winner in the timeline; when another claim came first the node
  backs off (releases the slot, counted in :attr:`Worker.claims_lost`).
  A slot freed looks again at offers nobody claimed yet.
- **Stopping.** Anything in the timeline that moves a task past the
  epoch this node runs (a reassignment after this node was declared
  dead, a revocation, a final status, the run's end) stops its copy: a
  node that comes back after a partition reads the timeline it missed
  and stops its stale tasks. A result of a stopped task is not posted
  (and were it posted, the coordinator would ignore its older epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cluster import Accepted, Ledger, LedgerEvent
from .status import Assigned, Claimed

__all__ = ["Claim", "PostResult", "Run", "Stop", "Worker", "WorkerAction"]


@dataclass(frozen=True)
class Claim:
    """Post ``cis.dag.task.claimed``."""

    run_id: str
    task_id: str
    epoch: int


@dataclass(frozen=True)
class Run:
    """Run the task (its input inline in ``assigned``, or fetch ``assigned.input_url``).
    The epoch is its execution number: tell the agent."""

    run_id: str
    task_id: str
    epoch: int
    assigned: Assigned


@dataclass(frozen=True)
class Stop:
    """Stop the local copy of the task: a newer epoch, or its end, superseded it."""

    run_id: str
    task_id: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class PostResult:
    """Post ``cis.dag.task.result``."""

    run_id: str
    task_id: str
    epoch: int
    outcome: str
    output: str
    reason: str | None


WorkerAction = Claim | Run | Stop | PostResult


class Worker:
    """One node's tasks from other nodes' runs.

    :meth:`follow` a run when joining its room; feed :meth:`observe` the
    run's cluster events in timeline order; :meth:`finished` when a local
    copy ends; :meth:`run_ended` when the run is over.
    """

    def __init__(self, node_id: str, *, accept_remote_tasks: bool, slots: int) -> None:
        if slots < 0:
            raise ValueError("slots must not be negative")
        self.node_id = node_id
        self.accept_remote_tasks = accept_remote_tasks
        self.slots = slots
        self.ledgers: dict[str, Ledger] = {}
        self._claims: dict[tuple[str, str], int] = {}  #: claims posted, not yet decided
        self._running: dict[tuple[str, str], int] = {}
        #: Offers this node had no slot for, in order (claimed when one frees).
        self._offers: dict[tuple[str, str], Assigned] = {}
        self._assigned: dict[tuple[str, str], Assigned] = {}
        self.claims_lost = 0
        self.stopped = 0
        #: Results of stopped copies not posted.
        self.results_dropped = 0

    @property
    def free(self) -> int:
        return self.slots - len(self._claims) - len(self._running)

    def follow(self, run_id: str, coordinator: str, coordinator_epoch: int = 0) -> None:
        if run_id not in self.ledgers:
            self.ledgers[run_id] = Ledger(run_id, coordinator, coordinator_epoch=coordinator_epoch)

    def running(self) -> dict[tuple[str, str], int]:
        """(run, task) -> epoch of the copies this node runs."""
        return dict(self._running)

    def observe(self, run_id: str, event: LedgerEvent) -> list[WorkerAction]:
        ledger = self.ledgers.get(run_id)
        if ledger is None:
            return []
        outcome = ledger.observe(event)
        if not isinstance(outcome, Accepted):
            if isinstance(event, Claimed) and event.claimed_by == self.node_id:
                return self._lost(run_id, event)
            return []
        task = outcome.task
        if task is None:
            return []
        key = (run_id, task.task_id)
        actions = self._supersede(key, task.epoch, outcome.what)
        if outcome.what == "assigned":
            assert isinstance(event, Assigned)
            self._offers.pop(key, None)
            if event.assigned_to == self.node_id:
                self._claims[key] = event.epoch
                self._assigned[key] = event
                actions.append(Claim(run_id, task.task_id, event.epoch))
            elif event.assigned_to is None and self.accept_remote_tasks:
                self._assigned[key] = event
                if self.free > 0:
                    self._claims[key] = event.epoch
                    actions.append(Claim(run_id, task.task_id, event.epoch))
                else:
                    self._offers[key] = event
        elif outcome.what == "claimed":
            self._offers.pop(key, None)
            epoch = self._claims.get(key)
            if epoch == task.epoch:
                del self._claims[key]
                if task.holder == self.node_id:
                    self._running[key] = epoch
                    actions.append(Run(run_id, task.task_id, epoch, self._assigned.pop(key)))
                else:
                    # Another claim came first: back off, free the slot.
                    self._assigned.pop(key, None)
                    self.claims_lost += 1
        # A slot freed (a claim lost, a copy stopped): offers nobody took yet.
        return actions + self._claim_offers()

    def finished(
        self, run_id: str, task_id: str, epoch: int, outcome: str, output: str, reason: str | None = None
    ) -> list[WorkerAction]:
        """The local copy of epoch ``epoch`` ended (``completed`` or ``failed``)."""
        key = (run_id, task_id)
        if self._running.get(key) != epoch:
            self.results_dropped += 1
            return []
        del self._running[key]
        return [PostResult(run_id, task_id, epoch, outcome, output, reason), *self._claim_offers()]

    def run_ended(self, run_id: str) -> list[WorkerAction]:
        """The run is over (completed, failed, cancelled): stop what is left of it."""
        actions: list[WorkerAction] = []
        for key, epoch in list(self._running.items()):
            if key[0] == run_id:
                del self._running[key]
                self.stopped += 1
                actions.append(Stop(run_id, key[1], epoch, "the run ended"))
        for table in (self._claims, self._offers, self._assigned):
            for key in [k for k in table if k[0] == run_id]:
                del table[key]
        self.ledgers.pop(run_id, None)
        return actions + self._claim_offers()

    # -- decisions ---------------------------------------------------------------------------

    def _supersede(self, key: tuple[str, str], epoch: int, what: str) -> list[WorkerAction]:
        """Drop our claim or copy of the task if the timeline moved it past our epoch."""
        actions: list[WorkerAction] = []
        final = what in ("completed", "ended")
        claim = self._claims.get(key)
        if claim is not None and (claim < epoch or final):
            del self._claims[key]
            self._assigned.pop(key, None)
        mine = self._running.get(key)
        if mine is not None and (mine < epoch or what in ("revoked", "ended")):
            del self._running[key]
            self.stopped += 1
            reason = {"revoked": "revoked by the coordinator", "ended": "the task ended"}.get(
                what, f"superseded by epoch {epoch}"
            )
            actions.append(Stop(key[0], key[1], mine, reason))
        return actions

    def _lost(self, run_id: str, event: Claimed) -> list[WorkerAction]:
        key = (run_id, event.task_id)
        if self._claims.get(key) != event.epoch:
            return []
        del self._claims[key]
        self._assigned.pop(key, None)
        self.claims_lost += 1
        return self._claim_offers()

    def _claim_offers(self) -> list[WorkerAction]:
        actions: list[WorkerAction] = []
        while self._offers and self.free > 0:
            key = next(iter(self._offers))
            offer = self._offers.pop(key)
            ledger = self.ledgers.get(key[0])
            task = ledger.tasks.get(key[1]) if ledger else None
            if task is None or task.phase != "offered" or task.epoch != offer.epoch:
                continue  # claimed by someone else meanwhile, or moved on
            self._claims[key] = offer.epoch
            self._assigned[key] = offer
            actions.append(Claim(key[0], key[1], offer.epoch))
        return actions
