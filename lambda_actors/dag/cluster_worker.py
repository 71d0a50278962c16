"""The worker's side of several nodes (SPEC 8.3): which tasks to claim, run, stop.

A pure machine (events in, actions out; no I/O, no clock) over the same
:class:`~.cluster.Ledger` every node folds from a run's room, so what it
decides agrees with the coordinator:

- **Claiming.** An offer (mode ``matrix``) is claimed when the node accepts
  remote tasks, can run it (``can_run``: it serves the task's agent, or
  allows commands; a node that claimed what it cannot run would burn one of
  the task's retries on a failure of its own) and has a free slot (slots reserved by claims in flight
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

from collections.abc import Callable
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

    :meth:`follow` a run when joining its room; feed the events a (re)start
    finds in the room to :meth:`replay`, then call :meth:`caught_up`, then
    feed :meth:`observe` each new event in timeline order; :meth:`finished`
    when a local copy ends; :meth:`run_ended` when the run is over (its end
    written by the run's coordinator, as the ledger names it).
    """

    def __init__(
        self,
        node_id: str,
        *,
        accept_remote_tasks: bool,
        slots: int,
        can_run: Callable[[Assigned], bool] = lambda offer: True,
    ) -> None:
        if slots < 0:
            raise ValueError("slots must not be negative")
        self.node_id = node_id
        self.accept_remote_tasks = accept_remote_tasks
        #: Whether this node can run an offered task (its agent, or a command).
        self.can_run = can_run
        self.slots = slots
        self.ledgers: dict[str, Ledger] = {}
        self._claims: dict[tuple[str, str], int] = {}  #: claims posted, not yet decided
        self._running: dict[tuple[str, str], int] = {}
        #: Offers this node had no slot for, in order (claimed when one frees).
        self._offers: dict[tuple[str, str], Assigned] = {}
        #: The last assignment the ledger accepted, per task (what a Run carries).
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
        """An event of the run's room, in timeline order, as it comes."""
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
            self._assigned[key] = event
            self._offers.pop(key, None)
            if event.assigned_to == self.node_id:
                self._claims[key] = event.epoch
                actions.append(Claim(run_id, task.task_id, event.epoch))
            elif event.assigned_to is None and self.accept_remote_tasks and self.can_run(event):
                if self.free > 0:
                    self._claims[key] = event.epoch
                    actions.append(Claim(run_id, task.task_id, event.epoch))
                else:
                    self._offers[key] = event
        elif outcome.what == "claimed":
            self._offers.pop(key, None)
            claim = self._claims.pop(key, None)
            if task.holder == self.node_id:
                # Ours, posted now or by this node before it restarted (that
                # copy died with it): run it.
                actions += self._run(key, task.epoch)
            elif claim == task.epoch:
                # Another claim came first: back off, the slot is free again.
                self.claims_lost += 1
        # A slot freed (a claim lost, a copy stopped): offers nobody took yet.
        return actions + self._claim_offers()

    def replay(self, run_id: str, event: LedgerEvent) -> None:
        """An event read while catching up with the room after a (re)start:
        the ledger learns it and nothing is done yet (see :meth:`caught_up`)."""
        ledger = self.ledgers.get(run_id)
        if ledger is None:
            return
        outcome = ledger.observe(event)
        if isinstance(outcome, Accepted) and isinstance(event, Assigned):
            self._assigned[(run_id, event.task_id)] = event

    def caught_up(self, run_id: str) -> list[WorkerAction]:
        """Caught up with the room: act on where the run stands. A task this
        node had won and not finished before it restarted runs again (its copy
        died with the process); what is assigned to it is claimed; open offers
        are claimed while slots last."""
        ledger = self.ledgers.get(run_id)
        if ledger is None:
            return []
        actions: list[WorkerAction] = []
        for task in ledger.tasks.values():
            key = (run_id, task.task_id)
            assigned = self._assigned.get(key)
            if assigned is None or assigned.epoch != task.epoch or key in self._running or key in self._claims:
                continue
            if task.phase == "claimed" and task.holder == self.node_id:
                actions += self._run(key, task.epoch)
            elif task.phase == "assigned" and task.assigned_to == self.node_id:
                self._claims[key] = task.epoch
                actions.append(Claim(run_id, task.task_id, task.epoch))
            elif task.phase == "offered" and self.accept_remote_tasks:
                self._offers[key] = assigned
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

    def _run(self, key: tuple[str, str], epoch: int) -> list[WorkerAction]:
        assigned = self._assigned.get(key)
        if key in self._running or assigned is None or assigned.epoch != epoch:
            return []
        self._running[key] = epoch
        return [Run(key[0], key[1], epoch, assigned)]

    def _supersede(self, key: tuple[str, str], epoch: int, what: str) -> list[WorkerAction]:
        """Drop our claim or copy of the task if the timeline moved it past our epoch."""
        actions: list[WorkerAction] = []
        final = what in ("completed", "ended")
        claim = self._claims.get(key)
        if claim is not None and (claim < epoch or final):
            del self._claims[key]
        mine = self._running.get(key)
        if mine is not None and (mine < epoch or final or what == "revoked"):
            del self._running[key]
            self.stopped += 1
            reason = {"revoked": "revoked by the coordinator", "ended": "the task ended", "completed": "completed"}.get(
                what, f"superseded by epoch {epoch}"
            )
            actions.append(Stop(key[0], key[1], mine, reason))
        return actions

    def _lost(self, run_id: str, event: Claimed) -> list[WorkerAction]:
        key = (run_id, event.task_id)
        if self._claims.get(key) != event.epoch:
            return []
        del self._claims[key]
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
            actions.append(Claim(key[0], key[1], offer.epoch))
        return actions
