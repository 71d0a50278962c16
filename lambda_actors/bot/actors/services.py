"""What the bot's actors are handed when they start: :class:`BotServices`.

Actors share no mutable state with each other; they talk through addresses.
The services here are the exceptions by design, each safe to share:

- the store is the database (one connection, used from the Trio thread, so
  one writer); tables are partitioned by room, and each row has one owner;
- the Matrix client is a connection pool with no per-actor state;
- the configuration is frozen; the agents directory (configured and
  registered agents) changes only in the node's registry actor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Iterable

from ..agents_directory import AgentDirectory
from ...approvals.store import ApprovalStore
from ..store import OutboxItem, Store
from ...matrix import content as contents
from ...matrix.client import MatrixClient
from ...matrix.errors import MatrixFailure
from ...node.metrics import BotCounters

#: State event type holding a chat room's binding, so a lost database can be
#: rebuilt from the homeserver (SPEC section 6, "Restart").
BINDING_STATE = "org.lambda.binding"
#: State event type marking a user's Space.
SPACE_STATE = "org.lambda.space"
#: State event type marking a room the node keeps for itself (a DAG status
#: or heartbeat room): never adopted as a user's chat, whoever is in it.
SERVICE_STATE = "org.lambda.service"
#: Where the tree's fixed actors live (see ``node.py``).
OUTBOX_PATH = "node/outbox"
AGENTS_PATH = "node/agents"
ROOMS_PATH = "node/rooms"
#: The node's approvals actor (lambda_actors/node/tree.py), when the node runs it.
APPROVALS_PATH = "node/approvals"

#: Content key naming the user message an answer or notice belongs to.
SOURCE_KEY = "org.lambda.source"
#: Content key set on the last send for a user message: its answer (or
#: error) is complete. Scripted users, tests and the chaos run wait for it.
DONE_KEY = "org.lambda.done"
#: Content key of an error notice: what kind of error it reports (one of the
#: ``ERROR_*`` kinds below), so scripted users, tests and the chaos run count
#: failures from data rather than by reading the prose.
ERROR_KEY = "org.lambda.error"

#: The agent answered with an error, or its connection failed mid-answer.
ERROR_AGENT_FAILED = "agent_failed"
#: The bot, or the connection to the agent, stopped in the middle of an answer.
ERROR_INTERRUPTED = "interrupted"
#: The agent is parked (it failed repeatedly); try again later.
ERROR_AGENT_UNAVAILABLE = "agent_unavailable"
#: The message could not be handed to the agent (its connection is gone).
ERROR_UNDELIVERABLE = "undeliverable"
#: Handling the message crashed the room repeatedly: it was set aside.
ERROR_SET_ASIDE = "set_aside"
#: The room's agent is no longer in agents.yaml.
ERROR_AGENT_REMOVED = "agent_removed"
#: The homeserver refused or failed a call the message needed.
ERROR_HOMESERVER = "homeserver"
#: A file the user sent could not be taken (malformed, unfetchable, unsafe, too big).
ERROR_FILE = "file"
#: A limit of agents.yaml's ``limits:`` section was reached.
ERROR_LIMIT = "limit"
#: The room is end-to-end encrypted, which the bot cannot read.
ERROR_ENCRYPTED = "encrypted"
#: The room is archived; messages no longer go to the agent.
ERROR_ARCHIVED = "archived"
#: Every kind above: the closed label set of ``lambda_errors_total``.
ERROR_KINDS = frozenset({
    ERROR_AGENT_FAILED, ERROR_INTERRUPTED, ERROR_AGENT_UNAVAILABLE, ERROR_UNDELIVERABLE, ERROR_SET_ASIDE,
    ERROR_AGENT_REMOVED, ERROR_HOMESERVER, ERROR_FILE, ERROR_LIMIT, ERROR_ENCRYPTED, ERROR_ARCHIVED,
})

#: Fault injection for chaos runs and tests (``LAMBDA_ACTORS_FAULTS``): with
#: this in ``BotServices.faults``, a room crashes on any text containing
#: :data:`POISON_MARK`, every time, as a deterministic bug would.
FAULT_POISON = "poison"
POISON_MARK = "[[poison]]"


@dataclass(frozen=True)
class Timing:
    """Timeouts and limits of the bot, in seconds (tests shorten them)."""

    agent_connect_timeout: float = 10.0
    agent_status_timeout: float = 10.0
    agent_idle_timeout: float = 60.0
    #: A connection with no message for this long closes (and its actor stops).
    connection_idle_close: float = 600.0
    #: How long a confirmation waits for !yes / !no before it counts as no.
    confirmation_timeout: float = 600.0
    #: Frames arriving this soon after an answer's END still belong to it
    #: (a second END, text after END): the next message waits them out.
    late_frame_grace: float = 0.1
    #: Show typing only for answers that take longer than this.
    typing_delay: float = 1.0
    #: Answer streaming: at most one edit per this many seconds.
    edit_interval: float = 1.0
    sync_timeout_ms: int = 30_000
    #: Events per room in one sync; more than that since the last sync is a
    #: gap, filled from the room's history (up to ``backfill_pages`` pages).
    sync_timeline_limit: int = 100
    backfill_pages: int = 50
    #: How often the sync actor compacts the store, and how long handled rows
    #: are kept for duplicate detection (``Store.compact``; a soak shortens both).
    compaction_interval: float = 600.0
    compaction_horizon: float = 24 * 3600.0


@dataclass(frozen=True)
class BotServices:
    store: Store
    client: MatrixClient
    #: Which agent is an id or DID (agents.yaml's and registered ones). An
    #: ``AgentsConfig`` given here is wrapped in a directory.
    agents: AgentDirectory
    user_id: str
    timing: Timing = Timing()
    #: Injected faults (chaos runs and tests only; empty in production).
    faults: frozenset[str] = frozenset()
    #: The node's approval records, when the node runs its approvals (rooms
    #: read which requests wait for an answer in them; None: none ever do).
    approvals: ApprovalStore | None = None
    #: What the actors count for /metrics (the node exposes it; SPEC 7.3).
    counters: BotCounters = field(default_factory=BotCounters)

    def __post_init__(self) -> None:
        # Embedders and tests may pass agents.yaml's AgentsConfig as it was
        # before registration existed; every lookup goes through a directory.
        object.__setattr__(self, "agents", AgentDirectory.of(self.agents))


def txn_id(kind: str, *cause: str) -> str:
    """A Matrix transaction id derived from what caused the send.

    The same cause gives the same id, so a send retried or replayed after a
    restart is recognised by the homeserver and posted once. Hashed because
    event ids contain characters that do not belong in a URL path segment.
    """
    digest = hashlib.sha256("\x00".join(cause).encode()).hexdigest()[:32]
    return f"la.{kind}.{digest}"


def notice(
    room_id: str,
    kind: str,
    cause: Iterable[str],
    body: str,
    source: str | None = None,
    *,
    done: bool = True,
    error: str | None = None,
) -> OutboxItem:
    """A bot notice (``m.notice``) as an outbox row, its txn id derived from ``cause``.

    ``source`` is the user message it answers; ``done=False`` for a notice
    in the middle of an answer (a question, a refused file). ``error`` is
    the error kind (an ``ERROR_*`` constant) when the notice reports one; it
    travels in the content under :data:`ERROR_KEY`.
    """
    content: dict[str, Any] = contents.text(body, msgtype="m.notice")
    if source is not None:
        content[SOURCE_KEY] = source
        if done:
            content[DONE_KEY] = True
    if error is not None:
        content[ERROR_KEY] = error
    return OutboxItem(0, txn_id(kind, *cause), room_id, "m.room.message", content)


async def quietly(awaitable: Awaitable[Any], log: Any = None, what: str = "matrix_call") -> bool:
    """Await a homeserver call whose failure changes nothing for anyone
    (typing, leaving a room we are done with): a :class:`MatrixFailure` is
    logged (when ``log`` is given) and swallowed, never charged to the caller.
    True when the call succeeded."""
    try:
        await awaitable
    except MatrixFailure as exc:
        if log is not None:
            log.info(f"{what}.failed", error=str(exc))
        return False
    return True
