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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from ...runtime.errors import NoSuchActor
from ..scheduler import RunStatus
from ..spec import parse_dag
from ..status import LogicalEvent, run_created
from ..store import RUN_TERMINAL, StoredSpec, TerminalState, new_run_id
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

    async def confirm(self, dag_id: str, version: str | None, client: str) -> str:
        services = self.services
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
        await self._registry().lookup(run_key(run_id)).call(msg, timeout=CALL_TIMEOUT_S)

    def _registry(self) -> Any:
        registry = self.services.registry
        if registry is None:
            raise NoSuchActor("the DAG actors have not started yet")
        return registry
