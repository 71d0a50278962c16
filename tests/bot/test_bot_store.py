"""The bot's SQLite store: replay without duplicates, atomic hand-offs."""

import sqlite3

import pytest

from lambda_actors.bot.store import OutboxItem, PendingConfirmation, RoomBinding, Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "bot.sqlite3")
    yield s
    s.close()


def _event(event_id, room="!r:x", body="hi"):
    return (event_id, room, {"event_id": event_id, "type": "m.room.message", "content": {"body": body}}, False)


def test_ingest_stores_events_and_token_together_and_ignores_replays(store):
    assert store.sync_token() is None
    assert store.ingest([_event("$1"), _event("$2", room="!s:x")], "batch-1") == ["!r:x", "!s:x"]
    assert store.sync_token() == "batch-1"
    # The same batch seen again after a crash adds nothing.
    assert store.ingest([_event("$1"), _event("$2", room="!s:x")], "batch-1") == []
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$1"]


def test_ingest_is_all_or_nothing(store):
    store.ingest([_event("$1")], "batch-1")
    with pytest.raises(TypeError):
        # An unserialisable event fails mid-batch: neither it, the event
        # before it, nor the new token may be stored.
        store.ingest([_event("$2"), ("$3", "!r:x", {"bad": object()}, False)], "batch-2")
    assert store.sync_token() == "batch-1"
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$1"]


def test_ingest_can_store_history_as_already_handled(store):
    handled = ("$old", "!r:x", {"event_id": "$old"}, True)
    assert store.ingest([handled, _event("$new")], "b") == ["!r:x"]
    assert store.ingest([("$older", "!q:x", {}, True)], "c") == []
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$new"]


def test_finish_marks_handled_and_queues_sends_atomically(store):
    store.ingest([_event("$1"), _event("$2")], "b")
    send = OutboxItem(0, "reply:$1", "!r:x", "m.room.message", {"body": "ok"})
    queued = store.finish("$1", [send])
    assert [q.txn_id for q in queued] == ["reply:$1"]
    assert store.is_handled("$1") and not store.is_handled("$2")
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$2"]
    assert store.rooms_with_unhandled() == ["!r:x"]
    # Finishing again (a replay) queues nothing new.
    assert store.finish("$1", [send]) == []
    assert [p.txn_id for p in store.pending_sends()] == ["reply:$1"]


def test_outbox_tracks_sent_event_ids(store):
    store.enqueue([OutboxItem(0, "t1", "!r:x", "m.room.message", {"body": "a"})])
    store.enqueue([OutboxItem(0, "t2", "!r:x", "m.room.message", {"body": "b"}, replaces_txn="t1")])
    assert [(p.txn_id, p.replaces_txn) for p in store.pending_sends()] == [("t1", None), ("t2", "t1")]
    store.mark_sent("t1", "$e1")
    assert store.sent_event_id("t1") == "$e1"
    assert store.sent_event_id("t2") is None
    assert [p.txn_id for p in store.pending_sends()] == ["t2"]


def test_start_turn_refuses_a_second_delivery_in_the_same_boot_only(tmp_path):
    first = Store.open(tmp_path / "db")
    first.stage("!r:x", "incoming/a.txt", "a.txt")
    assert first.start_turn("$1", "!r:x") == ["incoming/a.txt"]
    assert first.start_turn("$1", "!r:x") is None
    # The staged file went with the first message, not with the next one.
    assert first.staged("!r:x") == []
    assert first.start_turn("$2", "!r:x") == []
    first.close()
    restarted = Store.open(tmp_path / "db")
    assert restarted.start_turn("$1", "!r:x") == ["incoming/a.txt"]
    assert restarted.start_turn("$1", "!r:x") is None
    restarted.close()


def test_chat_ids_are_never_reused(store):
    a = store.new_chat_id("!a:x")
    b = store.new_chat_id("!b:x")
    assert b > a
    store.ensure_chat_id_above(100)
    assert store.new_chat_id("!c:x") == 101


def test_state_survives_reopening(tmp_path):
    s = Store.open(tmp_path / "db")
    s.bind_room(RoomBinding("!r:x", "@a:x", "agent-0", 7, "Chat 1", "!space:x"))
    s.set_user_space("@a:x", "!space:x")
    s.stage("!r:x", "incoming/1-a.txt", "a.txt")
    s.add_confirmation(PendingConfirmation("q1", "!r:x", 7, "rm", "-rf", "txn", 99.0))
    s.close()
    s = Store.open(tmp_path / "db")
    assert s.binding("!r:x") == RoomBinding("!r:x", "@a:x", "agent-0", 7, "Chat 1", "!space:x", False)
    assert s.user_space("@a:x") == "!space:x"
    assert [f.path for f in s.staged("!r:x")] == ["incoming/1-a.txt"]
    assert s.resolve_confirmation("q1") is True
    assert s.resolve_confirmation("q1") is False
    assert s.next_chat_number("@a:x") == 1
    assert s.next_chat_number("@a:x") == 2
    s.close()


def test_store_uses_wal(tmp_path):
    Store.open(tmp_path / "db").close()
    mode = sqlite3.connect(tmp_path / "db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
