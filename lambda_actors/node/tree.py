"""The node's own actors beside the chat bot's: approvals, their callbacks, HTTP.

::

    node
    ├── outbox
    ├── approvals             the one owner of approval decisions
    ├── approval-callbacks    signed callbacks, retried from the database
    ├── agents, rooms, sync   the chat bot (bot/actors/node.py)
    ├── registry              agents registered through the API, rooms made for them and for approvers
    └── http                  the API (none with --http off)

Approvals start after the outbox (which posts their prompts) and before the
rooms (which ask them about answers). The registry starts after the agents
supervisor (it adds registered agents there). The listener starts last, so it
stops first: requests in flight finish while everything they call still runs.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..approvals.actor import approvals_actor
from ..approvals.api import approval_routes
from ..approvals.callbacks import Poke, callback_actor
from ..approvals.matrix_views import MatrixViews
from ..approvals.record import Approval, Source
from ..approvals.registration import RegStatus
from ..approvals.registration_api import registration_routes
from ..approvals.registration_store import RegistrationStore
from ..approvals.registry import registry_actor
from ..approvals.registry_messages import Settle
from ..approvals.store import ApprovalStore
from ..bot.actors.services import AGENTS_PATH, APPROVALS_PATH, BotServices
from ..bot.agents_directory import AgentDirectory, RegisteredAgent
from ..bot.config import AgentsConfig
from ..runtime.context import ActorContext
from ..runtime.errors import ActorError
from ..runtime.registry import Registry
from ..runtime.spec import ChildSpec, SupervisorSpec
from ..runtime.state import Status
from ..dag.parts import DagParts
from .api import NodeApi, build_app
from .config import Listen, NodeConfig
from .health import AgentHealth, Facts
from .http import http_actor
from .metrics import NodeMetrics, Snapshot

__all__ = ["NodeParts", "agent_directory", "open_approval_store"]

CALLBACKS_PATH = "node/approval-callbacks"
REGISTRY_PATH = "node/registry"


def open_approval_store(database: Path) -> ApprovalStore:
    """The approvals live in the bot's database (one file to back up), on a
    connection of their own: every write is one short transaction on the
    Trio thread, so the two connections never hold a transaction at once."""
    db = sqlite3.connect(database, timeout=5.0)
    db.execute("PRAGMA journal_mode=WAL")
    return ApprovalStore(db)


def agent_directory(agents: AgentsConfig, approvals: ApprovalStore | None) -> AgentDirectory:
    """agents.yaml's agents and the registered ones kept in the database
    (SPEC 7.2: a restarted node starts them again; deregistered ones stay
    known as such, so their rooms say so)."""
    if approvals is None:
        return AgentDirectory(agents)
    rows = RegistrationStore(approvals.connection).agents()
    return AgentDirectory(
        agents,
        registered=[
            RegisteredAgent(r.agent(), r.owner, r.id) for r in rows if r.status is RegStatus.APPROVED
        ],
        deregistered=[r.agent_did for r in rows if r.status is RegStatus.DEREGISTERED and r.agent_did],
    )


@dataclass
class NodeParts:
    """What the node adds to the bot's tree. ``first`` go after the outbox,
    ``last`` after the sync actor."""

    bot: BotServices
    approvals: ApprovalStore
    api: NodeApi
    listen: Listen | None
    registrations: RegistrationStore
    #: The running tree, known once the first of our actors starts.
    registry: Registry | None = None
    #: DAG runs (SPEC 8): ``node/dag``, the Matrix side in hybrid mode, the DAG routes.
    dag: DagParts | None = None

    @classmethod
    def build(cls, bot: BotServices, config: NodeConfig, listen: Listen | None) -> NodeParts:
        """``bot.approvals`` is the store the rooms read (see :func:`open_approval_store`)."""
        assert bot.approvals is not None
        registrations = RegistrationStore(bot.approvals.connection)
        parts = cls(bot, bot.approvals, NodeApi(config, NodeMetrics(counters=bot.counters), lambda: parts.facts()), listen, registrations)
        parts.api.metrics.watch(parts.snapshot)
        parts.dag = DagParts.build(bot, config)
        return parts

    def first(self) -> list[ChildSpec]:
        views = MatrixViews(self.bot, self.approvals, self.registrations)
        return [
            ChildSpec("approvals", self._approvals, args=(views,)),
            ChildSpec("approval-callbacks", callback_actor, args=(self.approvals,)),
        ]

    def last(self) -> list[ChildSpec | SupervisorSpec]:
        registry = ChildSpec("registry", self._registry)
        # node/dag after the agents and approvals it uses, before the listener.
        dag = self.dag.children() if self.dag is not None else []
        return [registry, *dag] if self.listen is None else [registry, *dag, ChildSpec("http", self._http)]

    async def _approvals(self, ctx: ActorContext, views: MatrixViews) -> None:
        self.registry = ctx.registry
        await approvals_actor(ctx, self.approvals, views, self._poke_callbacks, on_final=self._settle_registration)

    async def _registry(self, ctx: ActorContext) -> None:
        self.registry = ctx.registry
        await registry_actor(ctx, self.bot, self.registrations, self.approvals, self._poke_callbacks)

    async def _http(self, ctx: ActorContext) -> None:
        assert self.listen is not None
        self.registry = ctx.registry
        if not self.api.routes:
            registry = ctx.registry.lookup(REGISTRY_PATH)
            self.api.routes.extend(approval_routes(ctx.registry.lookup(APPROVALS_PATH), self.approvals, registry))
            self.api.routes.extend(registration_routes(registry, self.registrations, self.bot.agents, self.agents))
            if self.dag is not None:
                self.api.routes.extend(self.dag.routes())
        await http_actor(ctx, build_app(self.api), self.api, self.listen)

    def _poke_callbacks(self) -> None:
        # Never waits: a full mailbox already holds a poke, and a sender that
        # is restarting reads the schedule from the store when it starts.
        if self.registry is not None:
            try:
                self.registry.lookup(CALLBACKS_PATH).send_nowait(Poke())
            except ActorError:
                pass

    def _settle_registration(self, record: Approval) -> None:
        # Never waits: a full mailbox holds a poke already, and a registry
        # that is restarting settles every pending registration when it starts.
        if record.source is Source.REGISTRATION and self.registry is not None:
            try:
                self.registry.lookup(REGISTRY_PATH).send_nowait(Settle())
            except ActorError:
                pass

    # -- what /healthz and /metrics read ------------------------------------------

    def agents(self) -> dict[str, AgentHealth]:
        if self.registry is None:
            return {}
        out = {}
        for state in self.registry.supervisor(AGENTS_PATH).which_children():
            retry_at = None
            if state.status in (Status.PARKED, Status.BACKING_OFF) and state.retry_in is not None:
                at = datetime.now(UTC) + timedelta(seconds=state.retry_in)
                retry_at = at.isoformat(timespec="seconds").replace("+00:00", "Z")
            out[state.name] = AgentHealth(str(state.status), retry_at)
        return out

    def facts(self) -> Facts:
        store = self.bot.store
        return Facts(
            now=time.time(),
            last_sync_at=store.last_ingest_at,
            sync_timeout_s=self.bot.timing.sync_timeout_ms / 1000,
            store_writable=store.writable(),
            agents=self.agents(),
            outbox_depth=store.outbox_depth(),
            pending_approvals=self.approvals.pending_count(),
            active_dag_runs=len(self.dag.services.store.unfinished_runs()) if self.dag is not None else 0,
        )

    def snapshot(self) -> Snapshot:
        stats = self.registry.supervisor("node").tree_statistics() if self.registry is not None else []
        last_sync = self.bot.store.last_ingest_at
        return Snapshot(
            agent_states={name: agent.state for name, agent in self.agents().items()},
            actor_restarts=sum(s.restarts for s in stats),
            actor_parks=sum(s.parks for s in stats),
            outbox_depth=self.bot.store.outbox_depth(),
            sync_lag_s=None if last_sync is None else max(0.0, time.time() - last_sync),
            pending_approvals=self.approvals.pending_count(),
            approvals=self.approvals.count_by_status(),
            connection_states=self.connection_states(),
            rate_limited=self.bot.client.rate_limited,
            dag_tasks=(
                {str(status): n for status, n in self.dag.services.store.task_counts().items()}
                if self.dag is not None
                else None
            ),
        )

    def connection_states(self) -> dict[str, int]:
        """Every agent's connection actors (one per chat in use), by supervision state."""
        counts: dict[str, int] = {}
        if self.registry is None:
            return counts
        for agent in self.registry.supervisor(AGENTS_PATH).which_children():
            try:
                chats = self.registry.supervisor(f"{AGENTS_PATH}/{agent.name}").which_children()
            except LookupError:
                continue  # between incarnations
            for chat in chats:
                counts[str(chat.status)] = counts.get(str(chat.status), 0) + 1
        return counts
