"""``node/dag/runs``: starts run actors in their scope's worker, resumes runs
on start, and keeps the workers (SPEC 8 "Workers", "Durable").

- **On start** every run the store holds unfinished gets its run actor again
  (oldest first; one already running, after only this actor restarted, is
  left alone). The run actor rebuilds itself from the store.
- **StartRun** (a call from the API's confirm) starts one run's actor in the
  worker of its scope (``worker-global``, ``worker-project-<id>`` ...),
  starting the worker first if it is not there.
- **RunEnded** (from a run actor that wrote its final state): once the run
  actor has returned, it is forgotten, and its worker is stopped if no run is
  left in it, unless the run asked for ``reuse_worker``.

- **Checkpoints**: after commits (at most every ``CHECKPOINT_EVERY_S``) the
  store's WAL is copied into the database file on a worker thread, so the
  file's syncs never hold up the Trio thread every run shares.

One actor does the first three, so a worker is never stopped while a run is
being started in it.
"""

from __future__ import annotations

import sqlite3

import trio

from ...runtime.context import ActorContext
from ...runtime.errors import ActorError, ChildSpecError
from ...runtime.monitors import Down
from ...runtime.request import Request
from ...runtime.spec import ChildSpec, SupervisorSpec
from ...runtime.state import Status
from ...runtime.supervisor import Supervisor
from ..store import RUN_TERMINAL, DagStore, NotFound
from .messages import RunEnded, StartRun
from .run import run_actor
from .services import DagServices

__all__ = ["COORDINATOR_MAILBOX", "RUN_MAILBOX", "coordinator_actor"]

#: A run actor holds at most one report per slot, a grant and a few calls.
RUN_MAILBOX = 10_000
#: One RunEnded per run and a few calls: sized so its senders never wait.
COORDINATOR_MAILBOX = 100_000
#: The least time between two checkpoints of the store (see _checkpoints).
CHECKPOINT_EVERY_S = 0.5


async def coordinator_actor(ctx: ActorContext, services: DagServices) -> None:
    services.registry = ctx.registry
    coordinator = _Coordinator(ctx, services)
    coordinator.resume()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_checkpoints, ctx, services.store)
        await _serve(ctx, coordinator)
        nursery.cancel_scope.cancel()


async def _checkpoints(ctx: ActorContext, store: DagStore) -> None:
    """The store's WAL copied into the database file on a worker thread, after
    commits, at most every :data:`CHECKPOINT_EVERY_S`: the file's syncs never
    hold up the Trio thread the runs share (see store.open_dag_store)."""
    committed = trio.Event()
    store.on_commit = committed.set
    try:
        while True:
            await committed.wait()
            # Renewed before the checkpoint: a commit made during it or the
            # pause after it is seen by the next round.
            committed = trio.Event()
            store.on_commit = committed.set
            try:
                # Not abandoned when cancelled: a checkpoint is short, and the
                # store is closed only after the tree (and this call) ended.
                await trio.to_thread.run_sync(store.checkpoint)
            except sqlite3.Error as exc:
                # The store's connection still checkpoints itself past its limit.
                ctx.log.warning("dag.checkpoint_failed", error=str(exc))
            await trio.sleep(CHECKPOINT_EVERY_S)
    finally:
        if store.on_commit == committed.set:
            store.on_commit = None


async def _serve(ctx: ActorContext, coordinator: _Coordinator) -> None:
    async for msg in ctx.mailbox:
        match msg:
            case Request(msg=StartRun(run_id=run_id)):
                try:
                    coordinator.start(run_id)
                except (NotFound, ActorError) as exc:
                    msg.fail(exc)
                else:
                    msg.reply(None)
            case RunEnded(run_id=run_id, worker=worker):
                try:
                    address = ctx.supervisor.child_supervisor(worker).address(run_id)
                except ActorError:
                    await coordinator.tidy(worker, run_id)
                else:
                    # Tidied once the run actor has returned (Down).
                    coordinator.ending[address.path] = (worker, run_id)
                    ctx.monitor(address)
            case Down(path=path):
                found = coordinator.ending.pop(path, None)
                if found is not None:
                    await coordinator.tidy(*found)
            case Request():
                msg.fail(TypeError(f"the DAG coordinator does not take {msg.msg!r}"))
            case _:
                pass


class _Coordinator:
    def __init__(self, ctx: ActorContext, services: DagServices) -> None:
        self.ctx = ctx
        self.services = services
        self.dag: Supervisor = ctx.supervisor
        #: Runs that ended and whose actor is returning: its path -> (worker, run id).
        self.ending: dict[str, tuple[str, str]] = {}
        #: Workers whose runs asked to keep them.
        self.reused: set[str] = set()

    def resume(self) -> None:
        for run in self.services.store.unfinished_runs():
            try:
                self.start(run.run_id)
            except (NotFound, ActorError) as exc:
                self.ctx.log.warning("dag.resume_failed", run_id=run.run_id, error=str(exc))
        # Workers left from before this incarnation with nothing in them.
        for state in self.dag.which_children():
            if state.name.startswith("worker-") and not self._runs_in(state.name):
                self.ctx.log.info("dag.worker_idle", worker=state.name)

    def start(self, run_id: str) -> None:
        store = self.services.store
        run = store.run(run_id)
        if run.status in RUN_TERMINAL:
            return
        spec = store.spec(run.dag_id, run.version).spec
        name = spec.scope.worker_name
        if spec.reuse_worker:
            self.reused.add(name)
        try:
            worker = self.dag.child_supervisor(name)
        except ActorError:
            # A run that keeps crashing is parked alone (as a room is), never
            # taking the worker, and the other runs in it, down with it.
            worker = self.dag.start_child(
                SupervisorSpec(name, on_exhausted="park", intensity=3, period=30.0, cool_down=30.0)
            )
        try:
            address = worker.address(run_id)
        except ActorError:
            address = None
        if address is not None and not address.stopped:
            return  # already running (only this coordinator restarted)
        if address is not None:
            worker.delete_child(run_id)
        try:
            worker.start_child(
                ChildSpec(
                    run_id, run_actor, args=(self.services, run_id), restart="transient",
                    # One report per slot at most, plus grants and calls: never full.
                    mailbox_capacity=RUN_MAILBOX,
                )
            )
        except ChildSpecError as exc:
            self.ctx.log.warning("dag.run_not_started", run_id=run_id, error=str(exc))
        self.ctx.log.info("dag.run_started", run_id=run_id, worker=name)

    def _runs_in(self, worker: str, *, besides: str | None = None) -> list[str]:
        try:
            children = self.dag.child_supervisor(worker).which_children()
        except ActorError:
            return []
        return [
            c.name for c in children
            if c.name.startswith("run-") and c.name != besides and c.status is not Status.STOPPED
        ]

    async def tidy(self, worker: str, run_id: str) -> None:
        try:
            sup = self.dag.child_supervisor(worker)
        except ActorError:
            return
        try:
            if sup.child_state(run_id).status is Status.STOPPED:
                sup.delete_child(run_id)
        except (ActorError, ChildSpecError):
            pass
        if worker in self.reused or self._runs_in(worker, besides=run_id):
            return
        # Task actors still closing their sockets (they report first): the
        # worker is stopped once they are gone, not by cutting their closing
        # handshake short (which would cost its whole timeout).
        closing = [c.name for c in sup.which_children() if c.name.startswith("task-") and c.status is not Status.STOPPED]
        if closing:
            for name in closing:
                try:
                    address = sup.address(name)
                except ActorError:
                    continue
                self.ending[address.path] = (worker, run_id)
                self.ctx.monitor(address)
            return
        self.ctx.log.info("dag.worker_stopping", worker=worker)
        # Awaited: this actor's own children only, and nothing else waits on it.
        try:
            await self.dag.terminate_child(worker)
            self.dag.delete_child(worker)
        except ActorError:
            pass  # a dynamic supervisor is forgotten when it stops: nothing left to delete
