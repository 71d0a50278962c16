"""Schema versions: a database made by the release before versioning
(user_version 0, commit 4d2fca7) is migrated with every row intact."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lambda_actors.bot.store import SCHEMA_VERSION, OutboxItem, RoomBinding, Store

#: ``_SCHEMA`` of lambda_actors/bot/store.py at commit 4d2fca7, verbatim: the
#: layout every database made before schema versions has.
V0_SCHEMA = """
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


def _v0_database(path):
    """A database as the old release left it: schema, and rows in every table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_SCHEMA)
    event = {"event_id": "$old", "sender": "@alice:x", "type": "m.room.message", "content": {"body": "old"}}
    db.executemany(
        "INSERT INTO inbox (event_id, room_id, event, handled) VALUES (?, ?, ?, ?)",
        [("$old", "!r:x", json.dumps(event), 1), ("$new", "!r:x", json.dumps({**event, "event_id": "$new"}), 0)],
    )
    db.execute("INSERT INTO turns VALUES ('$new', 'old-boot', '[\"incoming/a.txt\"]')")
    db.execute(
        "INSERT INTO outbox (txn_id, room_id, event_type, content, replaces_txn, event_id)"
        " VALUES ('t1', '!r:x', 'm.room.message', '{\"body\": \"hi\"}', NULL, '$sent')"
    )
    db.execute(
        "INSERT INTO outbox (txn_id, room_id, event_type, content, replaces_txn, event_id)"
        " VALUES ('t2', '!r:x', 'm.room.message', '{\"body\": \"hi!\"}', 't1', NULL)"
    )
    db.execute("INSERT INTO users VALUES ('@alice:x', '!space:x', 2)")
    db.execute("INSERT INTO chat_ids (chat_id, room_id) VALUES (41, '!r:x')")
    db.execute("INSERT INTO rooms VALUES ('!r:x', '@alice:x', 'agent-0', 41, 'Chat 2', '!space:x', 0)")
    db.execute("INSERT INTO staged (room_id, path, filename) VALUES ('!r:x', 'incoming/b.txt', 'b.txt')")
    db.execute("INSERT INTO confirmations VALUES ('q1', '!r:x', 41, 'rm', '-rf', 'txn-q', 99.5)")
    db.execute("INSERT INTO meta VALUES ('sync_token', 's42')")
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    db.close()


@pytest.fixture
def migrated(tmp_path):
    _v0_database(tmp_path / "bot.sqlite3")
    store = Store.open(tmp_path / "bot.sqlite3")
    yield store
    store.close()


def test_a_v0_database_is_brought_to_the_current_version(migrated):
    assert migrated.schema_version() == SCHEMA_VERSION


def test_every_row_of_a_v0_database_survives_the_migration(migrated):
    assert migrated.sync_token() == "s42"
    assert migrated.is_handled("$old") and not migrated.is_handled("$new")
    assert [e.event_id for e in migrated.unhandled("!r:x")] == ["$new"]
    assert migrated.unhandled("!r:x")[0].event["content"] == {"body": "old"}
    # The turn was delivered by an earlier boot: it is claimed again, with its file.
    assert migrated.start_turn("$new", "!r:x") == ["incoming/a.txt"]
    assert migrated.sent_event_id("t1") == "$sent"
    assert migrated.pending_sends() == [OutboxItem(2, "t2", "!r:x", "m.room.message", {"body": "hi!"}, "t1")]
    assert migrated.user_space("@alice:x") == "!space:x"
    assert migrated.next_chat_number("@alice:x") == 3
    assert migrated.binding("!r:x") == RoomBinding("!r:x", "@alice:x", "agent-0", 41, "Chat 2", "!space:x", False)
    assert [(f.path, f.filename, f.size) for f in migrated.staged("!r:x")] == [("incoming/b.txt", "b.txt", 0)]
    # Its pending confirmation is gone with its table: confirmations are
    # approval records now, and no agent waits across the restart.
    assert migrated._db.execute("SELECT name FROM sqlite_master WHERE name = 'confirmations'").fetchone() is None
    assert migrated.new_chat_id("!n:x") == 42  # the sequence continues, never reused


def test_the_new_tables_work_on_a_migrated_database(migrated):
    assert migrated.record_failure("$new", "!r:x", "E", "T") == 1
    migrated.set_aside("$new")
    assert [d.sender for d in migrated.dead_letters()] == ["@alice:x"]
    # Rooms bound before creation times were kept are not counted as created.
    assert migrated.rooms_created_since("@alice:x", 0.0) == 0


def test_rows_from_before_the_migration_are_kept_a_full_horizon(migrated):
    migrated.finish("$new")
    # Their age is unknown, so they count as stored at the migration.
    assert sum(migrated.compact(horizon=3600.0).values()) == 0


def test_migrating_twice_changes_nothing(tmp_path):
    _v0_database(tmp_path / "bot.sqlite3")
    Store.open(tmp_path / "bot.sqlite3").close()
    store = Store.open(tmp_path / "bot.sqlite3")
    assert store.schema_version() == SCHEMA_VERSION
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$new"]
    store.close()


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    from lambda_actors.bot import store as store_module

    _v0_database(tmp_path / "bot.sqlite3")
    broken = (store_module._MIGRATIONS[0] + "; CREATE TABLE inbox (x)",)
    monkeypatch.setattr(store_module, "_MIGRATIONS", broken)
    with pytest.raises(sqlite3.OperationalError):
        Store.open(tmp_path / "bot.sqlite3")
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    columns = [row[1] for row in db.execute("PRAGMA table_info(inbox)")]
    assert "stored_at" not in columns
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'failures'").fetchone() is None
    db.close()
