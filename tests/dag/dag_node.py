"""An in-process DAG node for tests and benchmarks: the ``node/dag`` subtree
(dag/parts.py) under a runtime supervisor, a real DAG store in a temporary
file, real fake agents; no Matrix (execution_mode local)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lambda_actors.agent.fake import FakeAgent
from lambda_actors.dag.actors.services import ConfirmAsk, Gate
from lambda_actors.dag.parts import DagParts
from lambda_actors.dag.store import DagStore, RunRecord, open_dag_store
from lambda_actors.node.config import DagConfig, DagLocal, ExecutionMode, NodeConfig
from lambda_actors.runtime.context import ActorContext
from lambda_actors.runtime.supervisor import Supervisor, open_supervisor


class HeldGate:
    """A gate the test answers: each question waits until :meth:`answer`."""

    def __init__(self) -> None:
        self.asks: list[ConfirmAsk] = []
        self._answers: dict[str, bool] = {}
        self._changed = trio.Event()

    async def decide(self, ctx: ActorContext, ask: ConfirmAsk) -> bool:
        self.asks.append(ask)
        self._poke()
        while ask.session_id not in self._answers:
            await self._changed.wait()
        return self._answers[ask.session_id]

    def answer(self, session_id: str, approved: bool) -> None:
        self._answers[session_id] = approved
        self._poke()

    async def wait_asked(self, count: int = 1) -> None:
        while len(self.asks) < count:
            await self._changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@dataclass
class DagNode:
    store: DagStore
    parts: DagParts
    sup: Supervisor
    agents: dict[str, FakeAgent] = field(default_factory=dict)

    @property
    def control(self) -> Any:
        return self.parts.control

    async def start(self, toml: str) -> str:
        stored = await self.control.publish(toml, "test")
        return str(await self.control.confirm(stored.dag_id, stored.version, "test"))

    async def finished(self, run_id: str) -> RunRecord:
        """The run once final (waits on its event stream, never on a timer)."""
        while True:
            async with self.control.watch(run_id) as feed:
                # Watched before this read: nothing falls between the two.
                if self.store.run(run_id).final:
                    return self.store.run(run_id)
                async for _ in feed:
                    pass
            if self.store.run(run_id).final:
                return self.store.run(run_id)

    async def until(self, run_id: str, predicate: Any) -> None:
        """Until ``predicate()`` holds, re-checked after each of the run's transitions."""
        while not predicate():
            async with self.control.watch(run_id) as feed:
                if predicate():
                    return
                async for _ in feed:
                    if predicate():
                        return
            if self.store.run(run_id).final and not predicate():
                raise AssertionError("the run ended first")

    def statuses(self, run_id: str) -> dict[str, str]:
        return {t.task_id: str(t.status) for t in self.store.tasks(run_id)}

    def events(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, e.content) for e in self.store.unsent_status_events(100_000) if e.run_id == run_id]


@asynccontextmanager
async def dag_node(
    tmp_path: Path,
    *,
    max_workers: int = 4,
    agents: tuple[str, ...] = ("agent-0",),
    gate: Gate | None = None,
    allow_commands: bool = True,
    retry_backoff_s: float = 0.01,
    database: Path | None = None,
    status_outbox: bool = True,
    **fake: Any,
) -> AsyncIterator[DagNode]:
    config = NodeConfig(
        node_id="test-node",
        dag=DagConfig(execution_mode=ExecutionMode.LOCAL, allow_commands=allow_commands, local=DagLocal(max_workers)),
    )
    store = open_dag_store(database or tmp_path / "bot.sqlite3")
    fakes = {name: FakeAgent(tmp_path / f"ws-{name}", **fake) for name in agents}
    for agent in fakes.values():
        agent.workspace.mkdir(parents=True, exist_ok=True)
    try:
        async with trio.open_nursery() as nursery:
            for agent in fakes.values():
                await nursery.start(agent.serve)

            def url(agent_id: str) -> str | None:
                return fakes[agent_id].base_url if agent_id in fakes else None

            parts = DagParts.local(store, config, url, known_agents=lambda a: a in fakes, gate=gate)
            parts.services.retry_backoff_s = retry_backoff_s
            # The tests read each run's transitions from the store's status
            # outbox, as a broadcaster would: kept although nothing sends them
            # (execution_mode local keeps none, ``status_outbox=False``).
            parts.services.broadcasting = status_outbox
            async with open_supervisor("node", parts.children()) as sup:
                yield DagNode(store, parts, sup, fakes)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
