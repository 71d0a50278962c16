"""The DAG routes' :class:`..api.DagControl`, served by the node's DAG actors.

- ``publish`` checks the document against the node's agents and ``[dag]
  allow_commands`` and keeps it (a store write, no actor needed).
- ``confirm`` writes the run (``created``, with its ``cis.dag.run.created``
  event), then asks the coordinator to start its actor. If the coordinator
  is restarting the run is in the store anyway, and the coordinator resumes
  it when it starts.
- ``cancel`` / ``pause`` / ``resume`` are calls to the run's actor, which
  answers once the move is in the store. A run that ended answers
  :class:`..store.TerminalState` (409).
- ``watch`` feeds the API's server-sent events from the run actors'
  transitions (:class:`.services.Watchers`: bounded, a slow watcher dropped).

In modes ``matrix`` and ``federation`` (several nodes, SPEC 8.3) a run is
the cluster driver's (``node/dag-cluster``, actors/cluster_node.py):
confirm, cancel, pause and resume are calls to it; its refusals (a
federation run without workers, a spec too large for one event, a run
another node leads) are the API's 400 / 409 with the fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from ...node.api import ApiError
from ...runtime.errors import NoSuchActor
from .. import scheduler as sch
from ..scheduler import RunStatus
from ..spec import parse_dag
from ..status import LogicalEvent, run_created
from ..store import RUN_TERMINAL, IllegalMove, StoredSpec, TerminalState, new_run_id
from .cluster_brain import ClusterRefused
from .cluster_node import CLUSTER_PATH, CatchingUp, Confirm, Control
from .messages import CancelRun, PauseRun, ResumeRun, StartRun
from .run import COORDINATOR
from .services import DagServices, run_key

__all__ = ["NodeDagControl"]

#: How long the API waits for a run actor's answer.
CALL_TIMEOUT_S = 30.0


class NodeDagControl:
    def __init__(self, services: DagServices, dag_path: str = "node/dag") -> None:
        self.services = services
        self.dag_path = dag_path

    async def publish(self, document: str | Mapping[str, Any], client: str) -> StoredSpec:
        config = self.services.node.dag
        spec = parse_dag(
            document, known_agents=self.services.known_agents, allow_commands=config.allow_commands,
            source="published DAG",
        )
        return self.services.store.publish(spec, client, self.services.wall())

    async def confirm(self, dag_id: str, version: str | None, client: str, workers: Sequence[str] = ()) -> str:
        services = self.services
        if services.node.dag.clustered:
            return await self._confirm_cluster(dag_id, version, tuple(workers))
        if workers:
            raise ApiError(
                400, f"this node runs DAGs in mode {services.node.dag.execution_mode}: workers are for mode federation"
                " (leave --workers out, or set [dag] execution_mode = \"federation\")", field="workers",
            )
        stored = services.store.spec(dag_id, version)
        spec = stored.spec
        now = services.wall()
        max_workers = spec.max_workers or services.node.dag.local.max_workers
        run_id = new_run_id()
        # The file's name is not sent to the node: who published it stands in.
        created = run_created(
            run_id, spec.dag_id, f"published by {stored.client}", max_workers, False,
            at=datetime.fromtimestamp(now, UTC),
        )
        run = services.store.create_run(spec, now, run_id=run_id, events=services.outbox([created]))
        services.poke()
        try:
            await self._registry().lookup(f"{self.dag_path}/{COORDINATOR}").call(
                StartRun(run.run_id), timeout=CALL_TIMEOUT_S
            )
        except NoSuchActor:
            pass  # restarting: it resumes every unfinished run when it starts
        return run.run_id

    async def _confirm_cluster(self, dag_id: str, version: str | None, workers: tuple[str, ...]) -> str:
        services = self.services
        spec = services.store.spec(dag_id, version).spec  # NotFound: 404
        run_id = new_run_id()
        mode = str(services.node.dag.execution_mode)
        try:
            # The driver posts the run and keeps its record in the store.
            await self._registry().lookup(CLUSTER_PATH).call(Confirm(run_id, spec, mode, workers), timeout=CALL_TIMEOUT_S)
        except ClusterRefused as exc:
            raise ApiError(400, str(exc), field="workers" if "workers" in str(exc) else None) from None
        except CatchingUp as exc:
            raise ApiError(503, str(exc)) from None
        return run_id

    async def cancel(self, run_id: str) -> None:
        await self._move(run_id, CancelRun(), RunStatus.CANCELLED)

    async def pause(self, run_id: str) -> None:
        await self._move(run_id, PauseRun(), RunStatus.PAUSED)

    async def resume(self, run_id: str) -> None:
        await self._move(run_id, ResumeRun(), RunStatus.RUNNING)

    def watch(self, run_id: str) -> AbstractAsyncContextManager[AsyncIterator[LogicalEvent]]:
        return self.services.watchers.watch(run_id)

    async def _move(self, run_id: str, msg: object, wanted: RunStatus) -> None:
        run = self.services.store.run(run_id)  # NotFound: 404
        if run.status in RUN_TERMINAL:
            raise TerminalState(f"run {run_id}", run.status, wanted)
        if self.services.node.dag.clustered:
            what = {RunStatus.CANCELLED: "cancel", RunStatus.PAUSED: "pause"}.get(wanted, "resume")
            try:
                await self._registry().lookup(CLUSTER_PATH).call(Control(run_id, what), timeout=CALL_TIMEOUT_S)
            except ClusterRefused as exc:
                raise ApiError(409, str(exc), code="conflict") from None
            except sch.IllegalMove as exc:
                # The API speaks the store's errors (409).
                raise IllegalMove(f"run {run_id}", exc.current, exc.wanted) from None
            return
        await self._registry().lookup(run_key(run_id)).call(msg, timeout=CALL_TIMEOUT_S)

    def _registry(self) -> Any:
        registry = self.services.registry
        if registry is None:
            raise NoSuchActor("the DAG actors have not started yet")
        return registry
