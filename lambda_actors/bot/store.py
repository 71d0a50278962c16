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
    Room bindings (owner, agent, ``platform_chat_id``, when the bot created
    the room), each user's Space, and the never-reused chat id sequence
    (``AUTOINCREMENT`` guarantees that within one database; the high-water
    mark reserved in the bot's account data guarantees it across a lost one).
``staged``
    Files waiting for the next text (with their size). (Agent questions
    waiting for ``!yes`` are approval records, ``approvals/store.py``, in
    the same file; their old ``confirmations`` table is gone, migration 2.)
``failures`` / ``dead_letters``
    How many times handling an event crashed its actor (persisted at once, so
    the count survives the crash it counts), and the events set aside after
    too many: their last error and trace, for the operator.

Schema versions. ``PRAGMA user_version`` says which migrations a database
has had. Version 0 is the layout before versioning; every database, new or
old, is brought up by running the base layout and then each migration in
order, each in one transaction with its version bump, so a new database
follows exactly the path an old one does. A database from a newer release is
refused with an error saying so.

Compaction (:meth:`Store.compact`, run periodically by the sync actor) keeps
growth bounded. What duplicate detection needs, and therefore stays:

- every unhandled inbox row, and the newest timeline event of each room (the
  sync gap filler pages back through history until it meets a stored event;
  the newest one is where it must stop, or old messages would come back as
  new; an invitation row is no timeline event, so it does not count);
- handled inbox rows younger than the horizon (default a day): a sync or a
  history page that repeats them is recognised;
- every unsent outbox row; a sent row younger than the horizon, or queued
  after the oldest unhandled inbox row was stored (it may belong to a turn
  still to be answered after a restart, which asks ``has_send`` and edits it
  by its transaction id), or the prompt of an approval still pending;
- turns of events not yet handled, and any younger than the horizon;
- failure counts of unhandled events; the newest dead letters (1,000).

So the horizon is: a day, or longer for whatever is still in progress.
Freed pages are reused by SQLite, so the file levels off instead of shrinking.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: The layout before schema versions (user_version 0), kept verbatim: every
#: database starts from it and is migrated forward, new or old.
_BASE_SCHEMA = """
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


#: Migrations, in order: ``_MIGRATIONS[n]`` takes a database from version
#: ``n`` to ``n + 1``. Columns added to rows that already exist get the time
#: of the migration, so compaction keeps old rows a full horizon longer
#: rather than guessing their age. Never edit one that has shipped; add one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE failures (
        event_id   TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        count      INTEGER NOT NULL,
        error      TEXT NOT NULL,
        trace      TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE dead_letters (
        event_id     TEXT PRIMARY KEY,
        room_id      TEXT NOT NULL,
        sender       TEXT NOT NULL,
        error        TEXT NOT NULL,
        trace        TEXT NOT NULL,
        failures     INTEGER NOT NULL,
        set_aside_at REAL NOT NULL
    );
    ALTER TABLE rooms ADD COLUMN created_at REAL;
    CREATE INDEX rooms_owner ON rooms (owner, created_at);
    ALTER TABLE inbox ADD COLUMN stored_at REAL NOT NULL DEFAULT 0;
    UPDATE inbox SET stored_at = :now;
    CREATE INDEX inbox_room ON inbox (room_id, seq);
    ALTER TABLE outbox ADD COLUMN queued_at REAL NOT NULL DEFAULT 0;
    UPDATE outbox SET queued_at = :now;
    ALTER TABLE turns ADD COLUMN started_at REAL NOT NULL DEFAULT 0;
    UPDATE turns SET started_at = :now;
    ALTER TABLE staged ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    """,
    # Agent confirmations became approval records (approvals/agent.py). One
    # left pending here has no agent waiting for it: its socket did not
    # survive the restart this migration runs in.
    """
    DROP TABLE confirmations;
    """,
)

#: The version a database has once every migration ran.
SCHEMA_VERSION = len(_MIGRATIONS)

#: How long handled rows are kept for duplicate detection (see the module doc).
COMPACTION_HORIZON = 24 * 3600.0
#: How many dead letters are kept (the newest).
DEAD_LETTERS_KEPT = 1000


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
    #: Bytes on disk (0 for rows staged before sizes were recorded).
    size: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """An event set aside because handling it crashed its actor too often."""

    event_id: str
    room_id: str
    #: Who sent it ("" when the stored event names nobody).
    sender: str
    #: The last recorded error (one line) and its traceback.
    error: str
    trace: str
    #: How many times handling it crashed.
    failures: int
    #: Wall-clock time (``time.time()``) it was set aside.
    set_aside_at: float


class StoreError(Exception):
    """The database cannot be used as it is; the message says what to do."""


class Store:
    """The bot's SQLite database. Open with :meth:`open`; close when done."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        # A fresh id per process: it is how `turns` tells "delivered by this
        # run of the bot" from "delivered before the last restart".
        self.boot_id = uuid.uuid4().hex
        #: When /sync last answered (wall clock; set by ``ingest``), for /healthz.
        self.last_ingest_at: float | None = None

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        """Open (creating if need be) and migrate the database at ``path``.

        The database holds every user's messages: its directory is created
        0700 and the database with its ``-wal``/``-shm`` files are 0600
        (SQLite gives those two the main file's mode; they are tightened
        here too in case an older run left them wider).
        """
        path = Path(path)
        memory = str(path) == ":memory:"
        if not memory:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created before SQLite opens it, so it is never world-readable,
            # not even for a moment.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            _tighten(path, 0o600)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (the case we promise);
            # only an OS crash can lose the last commits, and Matrix replays those.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            # After a checkpoint the WAL file is cut back to this size, so a
            # burst does not leave a large file behind for good.
            db.execute("PRAGMA journal_size_limit=4194304")
            _migrate(db, path)
        except BaseException:
            db.close()
            raise
        if not memory:
            for suffix in ("-wal", "-shm"):
                _tighten(path.with_name(path.name + suffix), 0o600)
        return cls(db)

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

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
        now = time.time()
        with self._transaction() as db:
            for event_id, room_id, event, handled in events:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO inbox (event_id, room_id, event, handled, stored_at) VALUES (?, ?, ?, ?, ?)",
                    (event_id, room_id, json.dumps(event), int(handled), now),
                )
                if cursor.rowcount and not handled:
                    rooms[room_id] = None
            self._set_meta(db, "sync_token", next_batch)
        self.last_ingest_at = now
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
                "INSERT INTO turns (event_id, boot_id, attachments, started_at) VALUES (?, ?, ?, ?)",
                (event_id, self.boot_id, json.dumps(paths), time.time()),
            )
        return paths

    # -- poison events ----------------------------------------------------------

    def record_failure(self, event_id: str, room_id: str, error: str, trace: str) -> int:
        """Count one crash of the actor handling ``event_id``; returns the count so far.

        Committed at once: the crash this records is about to end the actor,
        and the next incarnation must see the count to decide to set it aside.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT INTO failures (event_id, room_id, count, error, trace, updated_at) VALUES (?, ?, 1, ?, ?, ?)"
                " ON CONFLICT(event_id) DO UPDATE SET count = count + 1, error = excluded.error,"
                " trace = excluded.trace, updated_at = excluded.updated_at",
                (event_id, room_id, error, trace, time.time()),
            )
            (count,) = db.execute("SELECT count FROM failures WHERE event_id = ?", (event_id,)).fetchone()
        return int(count)

    def failures(self, event_id: str) -> int:
        """How many times handling ``event_id`` crashed its actor (0 if never)."""
        row = self._db.execute("SELECT count FROM failures WHERE event_id = ?", (event_id,)).fetchone()
        return int(row[0]) if row else 0

    def set_aside(self, event_id: str, sends: Iterable[OutboxItem] = ()) -> list[OutboxItem]:
        """Give up on a poison event, atomically: it is marked handled, a dead
        letter records its last error and trace, and ``sends`` (the notice to
        its sender) are queued. Returns the sends newly queued, like
        :meth:`finish`; setting aside twice adds nothing."""
        with self._transaction() as db:
            inbox = db.execute("SELECT room_id, event FROM inbox WHERE event_id = ?", (event_id,)).fetchone()
            failure = db.execute(
                "SELECT room_id, count, error, trace FROM failures WHERE event_id = ?", (event_id,)
            ).fetchone()
            room_id = (inbox[0] if inbox else None) or (failure[0] if failure else "")
            sender = _sender(inbox[1]) if inbox else ""
            count, error, trace = (failure[1], failure[2], failure[3]) if failure else (0, "", "")
            db.execute(
                "INSERT OR IGNORE INTO dead_letters (event_id, room_id, sender, error, trace, failures, set_aside_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, room_id, sender, error, trace, count, time.time()),
            )
            queued = self._enqueue(db, sends)
            db.execute("UPDATE inbox SET handled = 1 WHERE event_id = ?", (event_id,))
        return queued

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The events set aside, newest first."""
        rows = self._db.execute(
            "SELECT event_id, room_id, sender, error, trace, failures, set_aside_at FROM dead_letters"
            " ORDER BY set_aside_at DESC, rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    # -- outbox ---------------------------------------------------------------

    def enqueue(self, sends: Iterable[OutboxItem]) -> list[OutboxItem]:
        """Queue sends; a transaction id already queued is ignored (idempotent)."""
        with self._transaction() as db:
            return self._enqueue(db, sends)

    def _enqueue(self, db: sqlite3.Connection, sends: Iterable[OutboxItem]) -> list[OutboxItem]:
        queued = []
        now = time.time()
        for item in sends:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (txn_id, room_id, event_type, content, replaces_txn, queued_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (item.txn_id, item.room_id, item.event_type, json.dumps(item.content), item.replaces_txn, now),
            )
            if cursor.rowcount and cursor.lastrowid is not None:  # a row was inserted: it has a rowid
                queued.append(
                    OutboxItem(cursor.lastrowid, item.txn_id, item.room_id, item.event_type, item.content, item.replaces_txn)
                )
        return queued

    def outbox_depth(self) -> int:
        """Sends not yet acknowledged by the homeserver."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE event_id IS NULL").fetchone()[0])

    def writable(self) -> bool:
        """Whether the database takes a write now (for /healthz): a write
        transaction is begun and rolled back, so nothing changes."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False

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
        """A fresh ``platform_chat_id``: never reused, even after deletions.

        Synchronous on purpose (callers are in the middle of a transaction of
        thought); the sync actor keeps a reservation of ids ahead of this
        sequence in the bot's account data (:meth:`chat_ids_reserved`), so a
        lost database restarts above every id handed out here.
        """
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO chat_ids (room_id) VALUES (?)", (room_id,))
            assert cursor.lastrowid is not None  # an INSERT always sets it
            return cursor.lastrowid

    def ensure_chat_id_above(self, chat_id: int) -> None:
        """Make the sequence continue above ``chat_id`` (rebuilding from Matrix:
        a restored binding's id, or the reserved high-water mark)."""
        if chat_id < 1:
            return
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO chat_ids (chat_id, room_id) VALUES (?, '')", (chat_id,))

    def chat_id_high_water(self) -> int:
        """The highest chat id this database ever handed out or restored (0 if none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chat_ids'").fetchone()
        return int(row[0]) if row else 0

    def chat_id_used(self, chat_id: int) -> bool:
        """True if a room binding already uses ``chat_id``."""
        return self._db.execute("SELECT 1 FROM rooms WHERE chat_id = ?", (chat_id,)).fetchone() is not None

    def chat_ids_reserved(self) -> int:
        """The high-water mark last written to the bot's account data (0 if never)."""
        value = self._meta("chat_ids_reserved")
        return int(value) if value else 0

    def set_chat_ids_reserved(self, reserved: int) -> None:
        """Record that the account data now reserves every id up to ``reserved``."""
        with self._transaction() as db:
            self._set_meta(db, "chat_ids_reserved", str(int(reserved)))

    def bind_room(self, binding: RoomBinding, *, created_at: float | None = None) -> None:
        """Store (or update) a room's binding.

        ``created_at`` is when the bot created the room for its owner (wall
        clock, ``time.time()``); :meth:`rooms_created_since` counts those.
        Leave it None for a room the bot did not create (a DM it was invited
        to, a binding restored from Matrix) and when updating a binding: an
        update keeps the time already stored.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT INTO rooms (room_id, owner, agent_id, chat_id, name, space_id, archived, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(room_id) DO UPDATE SET owner = excluded.owner, agent_id = excluded.agent_id,"
                " chat_id = excluded.chat_id, name = excluded.name, space_id = excluded.space_id,"
                " archived = excluded.archived, created_at = COALESCE(excluded.created_at, rooms.created_at)",
                (
                    binding.room_id,
                    binding.owner,
                    binding.agent_id,
                    binding.chat_id,
                    binding.name,
                    binding.space_id,
                    int(binding.archived),
                    created_at,
                ),
            )

    def rooms_created_since(self, owner: str, since: float) -> int:
        """How many rooms the bot created for ``owner`` at or after ``since`` (wall clock)."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM rooms WHERE owner = ? AND created_at >= ?", (owner, since)
        ).fetchone()
        return int(count)

    def bindings(self) -> list[RoomBinding]:
        """Every stored room binding (checked against agents.yaml at start)."""
        rows = self._db.execute(
            "SELECT room_id, owner, agent_id, chat_id, name, space_id, archived FROM rooms ORDER BY chat_id"
        ).fetchall()
        return [_binding(row) for row in rows]

    def binding(self, room_id: str) -> RoomBinding | None:
        row = self._db.execute(
            "SELECT room_id, owner, agent_id, chat_id, name, space_id, archived FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        return _binding(row) if row else None

    def last_used_room(self, owner: str, agent_id: str) -> RoomBinding | None:
        """The owner's chat room with ``agent_id`` that they wrote in last (by
        the inbox), else their newest; archived rooms never."""
        row = self._db.execute(
            "SELECT r.room_id, r.owner, r.agent_id, r.chat_id, r.name, r.space_id, r.archived FROM rooms r"
            " LEFT JOIN inbox i ON i.room_id = r.room_id"
            " WHERE r.owner = ? AND r.agent_id = ? AND r.archived = 0"
            " GROUP BY r.room_id ORDER BY MAX(i.seq) DESC NULLS LAST, r.chat_id DESC LIMIT 1",
            (owner, agent_id),
        ).fetchone()
        return _binding(row) if row else None

    def user_rooms(self, user_id: str) -> list[RoomBinding]:
        rows = self._db.execute(
            "SELECT room_id, owner, agent_id, chat_id, name, space_id, archived FROM rooms WHERE owner = ? ORDER BY chat_id",
            (user_id,),
        ).fetchall()
        return [_binding(row) for row in rows]

    # -- staged attachments ---------------------------------------------------

    def stage(self, room_id: str, path: str, filename: str, size: int = 0) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO staged (room_id, path, filename, size) VALUES (?, ?, ?, ?)", (room_id, path, filename, size)
            )

    def staged(self, room_id: str) -> list[StagedFile]:
        rows = self._db.execute(
            "SELECT seq, path, filename, size FROM staged WHERE room_id = ? ORDER BY seq", (room_id,)
        ).fetchall()
        return [StagedFile(*row) for row in rows]

    def staged_bytes(self, room_id: str) -> int:
        """Total size of the room's staged files (as recorded by :meth:`stage`)."""
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM staged WHERE room_id = ?", (room_id,)).fetchone()
        return int(total)

    def unstage(self, room_id: str, seqs: Iterable[int] | None = None) -> list[StagedFile]:
        """Drop the given staged files, or all of the room's when ``seqs`` is None.

        Returns the rows removed, so the caller can delete their files: only
        rows this call removed, so two removals of the same file delete it once.
        """
        removed: list[StagedFile] = []
        with self._transaction() as db:
            if seqs is None:
                wanted = [s for (s,) in db.execute("SELECT seq FROM staged WHERE room_id = ? ORDER BY seq", (room_id,))]
            else:
                wanted = list(seqs)
            for seq in wanted:
                row = db.execute(
                    "SELECT seq, path, filename, size FROM staged WHERE room_id = ? AND seq = ?", (room_id, seq)
                ).fetchone()
                if row:
                    db.execute("DELETE FROM staged WHERE seq = ?", (seq,))
                    removed.append(StagedFile(*row))
        return removed

    # -- compaction -------------------------------------------------------------

    def compact(self, now: float | None = None, horizon: float = COMPACTION_HORIZON) -> dict[str, int]:
        """Delete rows no longer needed for duplicate detection (module doc:
        "Compaction"). One transaction; returns the rows removed per table."""
        now = time.time() if now is None else now
        cutoff = now - horizon
        removed: dict[str, int] = {}
        with self._transaction() as db:
            (oldest_unhandled,) = db.execute("SELECT MIN(stored_at) FROM inbox WHERE handled = 0").fetchone()
            removed["inbox"] = db.execute(
                "DELETE FROM inbox WHERE handled = 1 AND stored_at < ?"
                " AND seq NOT IN (SELECT MAX(seq) FROM inbox WHERE event_id NOT LIKE 'invite:%' GROUP BY room_id)",
                (cutoff,),
            ).rowcount
            outbox_cutoff = cutoff if oldest_unhandled is None else min(cutoff, oldest_unhandled)
            # The prompt of an approval still pending stays: reactions and
            # replies find their request by its event id, and its final edit
            # needs it (approvals wait up to a week; their table shares this file).
            keep_prompts = (
                " AND COALESCE(json_extract(content, '$.\"org.lambda.approval\".id')"
                " IN (SELECT id FROM approvals WHERE status = 'pending'), 0) = 0"
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'approvals'").fetchone()
                else ""
            )
            removed["outbox"] = db.execute(
                "DELETE FROM outbox WHERE event_id IS NOT NULL AND queued_at < ?" + keep_prompts,
                (outbox_cutoff,),
            ).rowcount
            removed["turns"] = db.execute(
                "DELETE FROM turns WHERE started_at < ?"
                " AND event_id NOT IN (SELECT event_id FROM inbox WHERE handled = 0)",
                (cutoff,),
            ).rowcount
            removed["failures"] = db.execute(
                "DELETE FROM failures WHERE updated_at < ?"
                " AND event_id NOT IN (SELECT event_id FROM inbox WHERE handled = 0)",
                (cutoff,),
            ).rowcount
            removed["dead_letters"] = db.execute(
                "DELETE FROM dead_letters WHERE rowid NOT IN"
                " (SELECT rowid FROM dead_letters ORDER BY set_aside_at DESC, rowid DESC LIMIT ?)",
                (DEAD_LETTERS_KEPT,),
            ).rowcount
        return removed

    def size_bytes(self) -> int:
        """Bytes the database uses in its pages (free pages excluded)."""
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self._db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def row_counts(self) -> dict[str, int]:
        """Rows per growing table (for the soak benchmark and the operator)."""
        return {
            table: int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("inbox", "outbox", "turns", "failures", "dead_letters")
        }

    # -- meta -----------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database to :data:`SCHEMA_VERSION` (module doc, "Schema versions")."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, but this lambda_actors knows only up to {SCHEMA_VERSION}:"
            " it was written by a newer release. Run that release, or point --data-dir at another directory."
        )
    if version == SCHEMA_VERSION:
        return
    db.executescript(_BASE_SCHEMA)
    now = time.time()
    for number in range(version, SCHEMA_VERSION):
        with _Transaction(db) as tx:
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    tx.execute(statement, {"now": now})
            # user_version is in the database header, written by this same
            # transaction: a crash leaves the migration wholly done or not.
            tx.execute(f"PRAGMA user_version = {number + 1}")


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except FileNotFoundError:
        pass


def _sender(event_json: str) -> str:
    try:
        sender = json.loads(event_json).get("sender")
    except (ValueError, AttributeError):
        return ""
    return sender if isinstance(sender, str) else ""


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
