"""The bot's durable state: one SQLite database in ``--data-dir``.

The store is a resource owned by the node, not an actor: every call is a short
local SQLite transaction (well under a millisecond in WAL mode), made from the
Trio thread, so the single connection *is* the single writer. An actor in
front of it would add a channel hop to every call without isolating anything.

What lives here, and why each table exists:

``inbox``
    Every Matrix event the sync loop saw, keyed by event id, with a
    ``handled`` flag. The sync token is stored in the same transaction as the
    batch it covers, so a crash replays what was not handled and nothing twice.
``turns``
    Which boot of the bot delivered a user message to its agent. A room actor
    that restarts must not hand the agent the same message again while the
    first delivery is still being answered (that would be a duplicate without
    a restart in between); after a bot restart, redelivery is the point.
``outbox``
    Every Matrix send, with the transaction id derived from what caused it.
    Rows are written before they are sent, so a crash resends them, and the
    homeserver's transaction-id deduplication makes the resend harmless.
``rooms`` / ``users`` / ``chat_ids``
    Room bindings (owner, agent, ``platform_chat_id``), each user's Space, and
    the never-reused chat id sequence (``AUTOINCREMENT`` guarantees that).
``staged`` / ``confirmations``
    Files waiting for the next text, and agent questions waiting for ``!yes``.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    room_id  TEXT NOT NULL,
    event    TEXT NOT NULL,
    handled  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS inbox_unhandled ON inbox (room_id, seq) WHERE handled = 0;
CREATE TABLE IF NOT EXISTS turns (
    event_id    TEXT PRIMARY KEY,
    boot_id     TEXT NOT NULL,
    attachments TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id       TEXT NOT NULL UNIQUE,
    room_id      TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    content      TEXT NOT NULL,
    replaces_txn TEXT,
    event_id     TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE event_id IS NULL;
CREATE TABLE IF NOT EXISTS users (
    user_id  TEXT PRIMARY KEY,
    space_id TEXT,
    chats_created INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS chat_ids (
    chat_id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    room_id  TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    chat_id  INTEGER NOT NULL,
    name     TEXT NOT NULL DEFAULT '',
    space_id TEXT,
    archived INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS staged (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id  TEXT NOT NULL,
    path     TEXT NOT NULL,
    filename TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    request_id TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    chat_id    INTEGER NOT NULL,
    action     TEXT NOT NULL,
    details    TEXT NOT NULL,
    prompt_txn TEXT NOT NULL,
    deadline   REAL NOT NULL
);
"""


@dataclass(frozen=True)
class InboxEvent:
    """One stored Matrix event, in the order the sync loop saw it."""

    seq: int
    event_id: str
    room_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class OutboxItem:
    """One Matrix send, durable until the homeserver has acknowledged it.

    ``replaces_txn`` names the send this one edits: its event id is only known
    once that send went out, so the outbox fills in ``m.relates_to`` then.
    """

    seq: int
    txn_id: str
    room_id: str
    event_type: str
    content: dict[str, Any]
    replaces_txn: str | None = None


@dataclass(frozen=True)
class RoomBinding:
    """What a chat room is bound to: its owner, agent and agent context."""

    room_id: str
    owner: str
    agent_id: str
    chat_id: int
    name: str = ""
    space_id: str | None = None
    archived: bool = False


@dataclass(frozen=True)
class StagedFile:
    seq: int
    path: str
    filename: str


@dataclass(frozen=True)
class PendingConfirmation:
    request_id: str
    room_id: str
    chat_id: int
    action: str
    details: str
    prompt_txn: str
    deadline: float


class Store:
    """The bot's SQLite database. Open with :meth:`open`; close when done."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        # A fresh id per process: it is how `turns` tells "delivered by this
        # run of the bot" from "delivered before the last restart".
        self.boot_id = uuid.uuid4().hex

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the case we promise);
        # only an OS crash can lose the last commits, and Matrix replays those.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)

    # -- sync token and inbox ------------------------------------------------

    def sync_token(self) -> str | None:
        return self._meta("sync_token")

    def ingest(self, events: Iterable[tuple[str, str, dict[str, Any], bool]], next_batch: str) -> list[str]:
        """Store one sync batch and its ``next_batch`` token atomically.

        ``events`` are ``(event_id, room_id, event, handled)``; ``handled``
        is True for history known to be answered already. Events already
        stored are ignored, so a batch replayed after a crash adds nothing.
        Returns the room ids with new unhandled events, in first-seen order.
        """
        rooms: dict[str, None] = {}
        with self._transaction() as db:
            for event_id, room_id, event, handled in events:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO inbox (event_id, room_id, event, handled) VALUES (?, ?, ?, ?)",
                    (event_id, room_id, json.dumps(event), int(handled)),
                )
                if cursor.rowcount and not handled:
                    rooms[room_id] = None
            self._set_meta(db, "sync_token", next_batch)
        return list(rooms)

    def unhandled(self, room_id: str, after_seq: int = 0) -> list[InboxEvent]:
        rows = self._db.execute(
            "SELECT seq, event_id, room_id, event FROM inbox WHERE room_id = ? AND handled = 0 AND seq > ? ORDER BY seq",
            (room_id, after_seq),
        ).fetchall()
        return [InboxEvent(seq, event_id, room, json.loads(event)) for seq, event_id, room, event in rows]

    def rooms_with_unhandled(self) -> list[str]:
        rows = self._db.execute(
            "SELECT room_id FROM inbox WHERE handled = 0 GROUP BY room_id ORDER BY MIN(seq)"
        ).fetchall()
        return [room_id for (room_id,) in rows]

    def has_event(self, event_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event_id,)).fetchone() is not None

    def is_handled(self, event_id: str) -> bool:
        row = self._db.execute("SELECT handled FROM inbox WHERE event_id = ?", (event_id,)).fetchone()
        return bool(row and row[0])

    def finish(self, event_id: str, sends: Iterable[OutboxItem] = ()) -> list[OutboxItem]:
        """Mark an event handled and queue the sends it caused, atomically.

        Either both happen or neither: a crash in between would otherwise
        lose the reply (handled, never sent) or post it twice (sent, then
        handled again after the restart). Returns the sends newly queued.
        """
        with self._transaction() as db:
            queued = self._enqueue(db, sends)
            db.execute("UPDATE inbox SET handled = 1 WHERE event_id = ?", (event_id,))
        return queued

    def start_turn(self, event_id: str, room_id: str) -> list[str] | None:
        """Claim a user message for delivery to its agent by this boot.

        The first claim takes the room's staged files with it (atomically, so
        a crash cannot lose them or attach them twice) and returns their
        paths. A claim after a restart returns the same paths again. None
        means this same boot already delivered the message: the first
        delivery is still being answered, and a second would reach the agent
        twice.
        """
        with self._transaction() as db:
            row = db.execute("SELECT boot_id, attachments FROM turns WHERE event_id = ?", (event_id,)).fetchone()
            if row:
                if row[0] == self.boot_id:
                    return None
                db.execute("UPDATE turns SET boot_id = ? WHERE event_id = ?", (self.boot_id, event_id))
                return json.loads(row[1])
            paths = [p for (p,) in db.execute("SELECT path FROM staged WHERE room_id = ? ORDER BY seq", (room_id,))]
            db.execute("DELETE FROM staged WHERE room_id = ?", (room_id,))
            db.execute(
                "INSERT INTO turns (event_id, boot_id, attachments) VALUES (?, ?, ?)",
                (event_id, self.boot_id, json.dumps(paths)),
            )
        return paths

    # -- outbox ---------------------------------------------------------------

    def enqueue(self, sends: Iterable[OutboxItem]) -> list[OutboxItem]:
        """Queue sends; a transaction id already queued is ignored (idempotent)."""
        with self._transaction() as db:
            return self._enqueue(db, sends)

    def _enqueue(self, db: sqlite3.Connection, sends: Iterable[OutboxItem]) -> list[OutboxItem]:
        queued = []
        for item in sends:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (txn_id, room_id, event_type, content, replaces_txn) VALUES (?, ?, ?, ?, ?)",
                (item.txn_id, item.room_id, item.event_type, json.dumps(item.content), item.replaces_txn),
            )
            if cursor.rowcount:
                queued.append(
                    OutboxItem(cursor.lastrowid, item.txn_id, item.room_id, item.event_type, item.content, item.replaces_txn)
                )
        return queued

    def pending_sends(self) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT seq, txn_id, room_id, event_type, content, replaces_txn FROM outbox WHERE event_id IS NULL ORDER BY seq"
        ).fetchall()
        return [OutboxItem(seq, txn, room, etype, json.loads(content), rep) for seq, txn, room, etype, content, rep in rows]

    def mark_sent(self, txn_id: str, event_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE outbox SET event_id = ? WHERE txn_id = ?", (event_id, txn_id))

    def has_send(self, txn_id: str) -> bool:
        """True if a send with this transaction id was ever queued."""
        return self._db.execute("SELECT 1 FROM outbox WHERE txn_id = ?", (txn_id,)).fetchone() is not None

    def sent_event_id(self, txn_id: str) -> str | None:
        row = self._db.execute("SELECT event_id FROM outbox WHERE txn_id = ?", (txn_id,)).fetchone()
        return row[0] if row else None

    # -- users, rooms, chat ids -----------------------------------------------

    def user_space(self, user_id: str) -> str | None:
        row = self._db.execute("SELECT space_id FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return row[0] if row else None

    def set_user_space(self, user_id: str, space_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO users (user_id, space_id) VALUES (?, ?) ON CONFLICT(user_id) DO UPDATE SET space_id = excluded.space_id",
                (user_id, space_id),
            )

    def next_chat_number(self, user_id: str) -> int:
        """The number for the user's next "Chat N" room (1, 2, ...)."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO users (user_id) VALUES (?)", (user_id,))
            db.execute("UPDATE users SET chats_created = chats_created + 1 WHERE user_id = ?", (user_id,))
            (number,) = db.execute("SELECT chats_created FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return number

    def new_chat_id(self, room_id: str) -> int:
        """A fresh ``platform_chat_id``: never reused, even after deletions."""
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO chat_ids (room_id) VALUES (?)", (room_id,))
            return int(cursor.lastrowid)

    def ensure_chat_id_above(self, chat_id: int) -> None:
        """Advance the sequence past ``chat_id`` (used when rebuilding from Matrix)."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO chat_ids (chat_id, room_id) VALUES (?, '')", (chat_id,))

    def bind_room(self, binding: RoomBinding) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rooms (room_id, owner, agent_id, chat_id, name, space_id, archived) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    binding.room_id,
                    binding.owner,
                    binding.agent_id,
                    binding.chat_id,
                    binding.name,
                    binding.space_id,
                    int(binding.archived),
                ),
            )

    def binding(self, room_id: str) -> RoomBinding | None:
        row = self._db.execute(
            "SELECT room_id, owner, agent_id, chat_id, name, space_id, archived FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        return _binding(row) if row else None

    def user_rooms(self, user_id: str) -> list[RoomBinding]:
        rows = self._db.execute(
            "SELECT room_id, owner, agent_id, chat_id, name, space_id, archived FROM rooms WHERE owner = ? ORDER BY chat_id",
            (user_id,),
        ).fetchall()
        return [_binding(row) for row in rows]

    # -- staged attachments ---------------------------------------------------

    def stage(self, room_id: str, path: str, filename: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO staged (room_id, path, filename) VALUES (?, ?, ?)", (room_id, path, filename))

    def staged(self, room_id: str) -> list[StagedFile]:
        rows = self._db.execute(
            "SELECT seq, path, filename FROM staged WHERE room_id = ? ORDER BY seq", (room_id,)
        ).fetchall()
        return [StagedFile(*row) for row in rows]

    def unstage(self, room_id: str, seqs: Iterable[int] | None = None) -> None:
        """Drop the given staged files, or all of the room's when ``seqs`` is None."""
        with self._transaction() as db:
            if seqs is None:
                db.execute("DELETE FROM staged WHERE room_id = ?", (room_id,))
            else:
                db.executemany("DELETE FROM staged WHERE room_id = ? AND seq = ?", [(room_id, s) for s in seqs])

    # -- confirmations --------------------------------------------------------

    def add_confirmation(self, confirmation: PendingConfirmation) -> None:
        c = confirmation
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO confirmations VALUES (?, ?, ?, ?, ?, ?, ?)",
                (c.request_id, c.room_id, c.chat_id, c.action, c.details, c.prompt_txn, c.deadline),
            )

    def confirmations(self, room_id: str) -> list[PendingConfirmation]:
        rows = self._db.execute(
            "SELECT * FROM confirmations WHERE room_id = ? ORDER BY deadline", (room_id,)
        ).fetchall()
        return [PendingConfirmation(*row) for row in rows]

    def resolve_confirmation(self, request_id: str) -> bool:
        """Remove a pending confirmation; False when it was already answered."""
        with self._transaction() as db:
            return db.execute("DELETE FROM confirmations WHERE request_id = ?", (request_id,)).rowcount > 0

    # -- meta -----------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _binding(row: tuple) -> RoomBinding:
    room_id, owner, agent_id, chat_id, name, space_id, archived = row
    return RoomBinding(room_id, owner, agent_id, chat_id, name, space_id, bool(archived))


class _Transaction:
    """``with`` block around BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
