"""What the bot's actors are handed when they start: :class:`BotServices`.

Actors share no mutable state with each other; they talk through addresses.
The services here are the exceptions by design, each safe to share:

- the store is the database (one connection, used from the Trio thread, so
  one writer); tables are partitioned by room, and each row has one owner;
- the Matrix client is a connection pool with no per-actor state;
- the configuration is frozen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

from ..config import AgentsConfig
from ..store import OutboxItem, Store
from ...matrix import content as contents
from ...matrix.client import MatrixClient

#: State event type holding a chat room's binding, so a lost database can be
#: rebuilt from the homeserver (SPEC section 6, "Restart").
BINDING_STATE = "org.lambda.binding"
#: State event type marking a user's Space.
SPACE_STATE = "org.lambda.space"
#: Where the tree's fixed actors live (see ``node.py``).
OUTBOX_PATH = "node/outbox"
AGENTS_PATH = "node/agents"
ROOMS_PATH = "node/rooms"

#: Content key naming the user message an answer or notice belongs to.
SOURCE_KEY = "org.lambda.source"
#: Content key set on the last send for a user message: its answer (or
#: error) is complete. Scripted users, tests and the chaos run wait for it.
DONE_KEY = "org.lambda.done"


@dataclass(frozen=True)
class Timing:
    """Timeouts and limits of the bot, in seconds (tests shorten them)."""

    agent_connect_timeout: float = 10.0
    agent_status_timeout: float = 10.0
    agent_idle_timeout: float = 60.0
    #: A connection with no message for this long closes (and its actor stops).
    connection_idle_close: float = 600.0
    #: While a turn is out, how often a room checks that its connection still exists.
    turn_check_interval: float = 10.0
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


@dataclass(frozen=True)
class BotServices:
    store: Store
    client: MatrixClient
    agents: AgentsConfig
    user_id: str
    timing: Timing = Timing()


def txn_id(kind: str, *cause: str) -> str:
    """A Matrix transaction id derived from what caused the send.

    The same cause gives the same id, so a send retried or replayed after a
    restart is recognised by the homeserver and posted once. Hashed because
    event ids contain characters that do not belong in a URL path segment.
    """
    digest = hashlib.sha256("\x00".join(cause).encode()).hexdigest()[:32]
    return f"la.{kind}.{digest}"


def notice(
    room_id: str, kind: str, cause: Iterable[str], body: str, source: str | None = None, *, done: bool = True
) -> OutboxItem:
    """A bot notice (``m.notice``) as an outbox row, its txn id derived from ``cause``.

    ``source`` is the user message it answers; ``done=False`` for a notice
    in the middle of an answer (a question, a refused file).
    """
    content: dict[str, Any] = contents.text(body, msgtype="m.notice")
    if source is not None:
        content[SOURCE_KEY] = source
        if done:
            content[DONE_KEY] = True
    return OutboxItem(0, txn_id(kind, *cause), room_id, "m.room.message", content)
