"""The bot's SQLite store: replay without duplicates, atomic hand-offs."""

import sqlite3
import stat

import pytest

from lambda_actors.approvals.agent import confirmation_record
from lambda_actors.approvals.messages import Confirm
from lambda_actors.approvals.record import Status, Via, decide
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.store import (
    SCHEMA_VERSION,
    OutboxItem,
    RoomBinding,
    StagedFile,
    Store,
    StoreError,
)


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
    s.close()
    s = Store.open(tmp_path / "db")
    assert s.binding("!r:x") == RoomBinding("!r:x", "@a:x", "agent-0", 7, "Chat 1", "!space:x", False)
    assert s.user_space("@a:x") == "!space:x"
    assert [f.path for f in s.staged("!r:x")] == ["incoming/1-a.txt"]
    assert s.next_chat_number("@a:x") == 1
    assert s.next_chat_number("@a:x") == 2
    s.close()


def test_store_uses_wal(tmp_path):
    Store.open(tmp_path / "db").close()
    mode = sqlite3.connect(tmp_path / "db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_failures_are_counted_per_event_and_survive_a_restart(tmp_path):
    s = Store.open(tmp_path / "db")
    s.ingest([_event("$p")], "b")
    assert s.failures("$p") == 0
    assert s.record_failure("$p", "!r:x", "KeyError: 'agent-0'", "Traceback 1") == 1
    assert s.record_failure("$p", "!r:x", "KeyError: 'agent-0'", "Traceback 2") == 2
    s.close()
    s = Store.open(tmp_path / "db")
    assert s.failures("$p") == 2
    assert s.record_failure("$p", "!r:x", "KeyError: 'agent-0'", "Traceback 3") == 3
    assert s.failures("$other") == 0
    s.close()


def test_set_aside_marks_handled_records_a_dead_letter_and_queues_the_notice_at_once(store):
    event = ("$p", "!r:x", {"event_id": "$p", "sender": "@u:x", "content": {"body": "boom"}}, False)
    store.ingest([event, _event("$next")], "b")
    store.record_failure("$p", "!r:x", "ValueError: first", "trace one")
    store.record_failure("$p", "!r:x", "ValueError: last", "trace two")
    note = OutboxItem(0, "aside:$p", "!r:x", "m.room.message", {"body": "set aside"})
    queued = store.set_aside("$p", [note])
    assert [q.txn_id for q in queued] == ["aside:$p"]
    assert store.is_handled("$p")
    assert [e.event_id for e in store.unhandled("!r:x")] == ["$next"]
    (letter,) = store.dead_letters()
    assert (letter.event_id, letter.room_id, letter.sender) == ("$p", "!r:x", "@u:x")
    assert (letter.error, letter.trace, letter.failures) == ("ValueError: last", "trace two", 2)
    assert letter.set_aside_at > 0
    # A replay of the same decision adds nothing.
    assert store.set_aside("$p", [note]) == []
    assert len(store.dead_letters()) == 1


def test_dead_letters_are_listed_newest_first_up_to_the_limit(store):
    for n in range(5):
        store.ingest([_event(f"${n}")], f"b{n}")
        store.record_failure(f"${n}", "!r:x", f"E{n}", "t")
        store.set_aside(f"${n}")
    assert [d.event_id for d in store.dead_letters(limit=3)] == ["$4", "$3", "$2"]


def test_unstage_returns_the_rows_it_removed_once(store):
    store.stage("!r:x", "incoming/1-a.txt", "a.txt", size=10)
    store.stage("!r:x", "incoming/2-b.txt", "b.txt", size=32)
    store.stage("!s:x", "incoming/3-c.txt", "c.txt", size=5)
    assert store.staged_bytes("!r:x") == 42
    first, second = store.staged("!r:x")
    assert store.unstage("!r:x", [second.seq]) == [StagedFile(second.seq, "incoming/2-b.txt", "b.txt", 32)]
    assert store.unstage("!r:x", [second.seq]) == []
    # Another room's file is not removed by naming its seq here.
    (other,) = store.staged("!s:x")
    assert store.unstage("!r:x", [other.seq]) == []
    assert store.unstage("!r:x") == [first]
    assert store.staged("!r:x") == [] and store.staged_bytes("!r:x") == 0
    assert store.staged("!s:x") == [other]


def test_rooms_created_since_counts_only_rooms_the_bot_created_in_the_window(store):
    store.bind_room(RoomBinding("!a:x", "@u:x", "agent-0", 1), created_at=1000.0)
    store.bind_room(RoomBinding("!b:x", "@u:x", "agent-0", 2), created_at=2000.0)
    store.bind_room(RoomBinding("!dm:x", "@u:x", "agent-0", 3))  # invited, not created
    store.bind_room(RoomBinding("!c:x", "@v:x", "agent-0", 4), created_at=2500.0)
    assert store.rooms_created_since("@u:x", 1500.0) == 1
    assert store.rooms_created_since("@u:x", 0.0) == 2
    # Updating a binding (archiving it) keeps its creation time.
    store.bind_room(RoomBinding("!b:x", "@u:x", "agent-0", 2, archived=True))
    assert store.rooms_created_since("@u:x", 1500.0) == 1
    assert store.binding("!b:x").archived


def test_data_dir_and_database_files_are_private(tmp_path):
    data = tmp_path / "data"
    s = Store.open(data / "bot.sqlite3")
    s.ingest([_event("$1")], "b")  # so the -wal and -shm files exist
    for path in (data / "bot.sqlite3", data / "bot.sqlite3-wal", data / "bot.sqlite3-shm"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    s.close()


def test_files_left_readable_by_an_older_run_are_tightened(tmp_path):
    Store.open(tmp_path / "bot.sqlite3").close()
    (tmp_path / "bot.sqlite3").chmod(0o644)
    Store.open(tmp_path / "bot.sqlite3").close()
    assert stat.S_IMODE((tmp_path / "bot.sqlite3").stat().st_mode) == 0o600


def test_new_database_has_the_current_schema_version(store):
    assert store.schema_version() == SCHEMA_VERSION >= 1


def test_a_database_from_a_newer_release_is_refused_with_what_to_do(tmp_path):
    Store.open(tmp_path / "db").close()
    db = sqlite3.connect(tmp_path / "db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer release.*--data-dir"):
        Store.open(tmp_path / "db")


def test_chat_id_high_water_and_reservation(store):
    assert store.chat_id_high_water() == 0 and store.chat_ids_reserved() == 0
    store.new_chat_id("!a:x")
    store.ensure_chat_id_above(40)
    assert store.chat_id_high_water() == 40
    store.ensure_chat_id_above(-5)  # a forged id never moves the sequence
    assert store.new_chat_id("!b:x") == 41
    store.set_chat_ids_reserved(1041)
    assert store.chat_ids_reserved() == 1041
    store.bind_room(RoomBinding("!b:x", "@u:x", "agent-0", 41))
    assert store.chat_id_used(41) and not store.chat_id_used(40)


# -- compaction -----------------------------------------------------------------

DAY = 24 * 3600.0


def _later(days=2.0):
    import time

    return time.time() + days * DAY


def test_compaction_drops_old_handled_events_but_keeps_each_rooms_newest_and_the_unhandled(store):
    store.ingest([_event("$a1"), _event("$a2"), _event("$b1", room="!b:x"), _event("$a3")], "t")
    for event_id in ("$a1", "$a2", "$b1"):
        store.finish(event_id)
    removed = store.compact(now=_later(), horizon=DAY)
    assert removed["inbox"] == 2  # $a1 and $a2; $b1 is !b:x's newest, $a3 is unhandled
    assert not store.has_event("$a1") and not store.has_event("$a2")
    assert store.has_event("$b1") and [e.event_id for e in store.unhandled("!r:x")] == ["$a3"]
    # Handled the same day: kept for duplicate detection.
    store.finish("$a3")
    assert store.compact(horizon=DAY)["inbox"] == 0


def test_an_invitation_row_never_stands_in_for_a_rooms_newest_event(store):
    store.ingest([_event("$a1"), ("invite:!r:x:s1", "!r:x", {"type": "org.lambda.invite"}, False)], "t")
    store.finish("$a1")
    store.finish("invite:!r:x:s1")
    store.compact(now=_later(), horizon=DAY)
    # The gap filler must still find the room's last real event.
    assert store.has_event("$a1") and not store.has_event("invite:!r:x:s1")


def test_compaction_keeps_unsent_rows_and_sends_of_turns_still_open(store):
    store.ingest([_event("$done"), _event("$open")], "t")
    store.enqueue([OutboxItem(0, "old-sent", "!r:x", "m.room.message", {"body": "a"})])
    store.mark_sent("old-sent", "$1")
    store.enqueue([OutboxItem(0, "unsent", "!r:x", "m.room.message", {"body": "b"})])
    store.finish("$done")
    # $open is unhandled: rows queued after it was stored may be its answer,
    # which a restarted turn finds (has_send) and edits by transaction id.
    store.ingest([_event("$open2")], "t2")
    store.enqueue([OutboxItem(0, "answer-part", "!r:x", "m.room.message", {"body": "c"})])
    store.mark_sent("answer-part", "$3")
    assert store.compact(now=_later(), horizon=DAY)["outbox"] == 0
    store.finish("$open")
    store.finish("$open2")
    assert store.compact(now=_later(), horizon=DAY)["outbox"] == 2  # old-sent, answer-part
    assert store.has_send("unsent")
    assert not store.has_send("old-sent") and not store.has_send("answer-part")


def test_compaction_keeps_the_prompts_of_approvals_still_pending(store, tmp_path):
    # The approvals share the database file (approvals/store.py); a prompt
    # outlives the horizon while its request may still be answered.
    approvals = ApprovalStore(sqlite3.connect(tmp_path / "bot.sqlite3"))
    pending, decided = (
        confirmation_record(Confirm(i, "agent-0", "!r:x", "@a:x", "rm", "", 7 * DAY), now=0.0) for i in ("apr_p", "apr_d")
    )
    for record in (pending, decided):
        approvals.create(record)
        store.enqueue([OutboxItem(0, f"prompt-{record.id}", "!r:x", "m.room.message",
                                  {"body": "ok?", "org.lambda.approval": {"id": record.id}})])
        store.mark_sent(f"prompt-{record.id}", f"$p-{record.id}")
    approvals.record_decision(decide(decided, Status.APPROVED, Via.COMMAND, at=1.0, by="@a:x"), now=1.0)
    assert store.compact(now=_later(), horizon=DAY)["outbox"] == 1
    assert store.sent_event_id("prompt-apr_p") == "$p-apr_p" and not store.has_send("prompt-apr_d")
    approvals.close()


def test_compaction_drops_turns_and_failures_of_handled_events_only(store):
    store.ingest([_event("$1"), _event("$2")], "t")
    store.start_turn("$1", "!r:x")
    store.start_turn("$2", "!r:x")
    store.record_failure("$1", "!r:x", "E", "T")
    store.record_failure("$2", "!r:x", "E", "T")
    store.finish("$1")
    removed = store.compact(now=_later(), horizon=DAY)
    assert (removed["turns"], removed["failures"]) == (1, 1)
    assert store.failures("$2") == 1 and store.failures("$1") == 0
    # $2's turn is still this boot's: a second delivery is still refused.
    assert store.start_turn("$2", "!r:x") is None


def test_compaction_keeps_the_newest_dead_letters(store, monkeypatch):
    from lambda_actors.bot import store as store_module

    monkeypatch.setattr(store_module, "DEAD_LETTERS_KEPT", 3)
    for n in range(5):
        store.ingest([_event(f"${n}")], f"t{n}")
        store.set_aside(f"${n}")
    assert store.compact()["dead_letters"] == 2
    assert [d.event_id for d in store.dead_letters()] == ["$4", "$3", "$2"]


def test_a_compacted_store_levels_off(tmp_path):
    s = Store.open(tmp_path / "db")
    sizes = []
    for round_ in range(6):
        now = _later(round_)
        for n in range(300):
            event_id = f"${round_}-{n}"
            s.ingest([_event(event_id, room=f"!{n % 7}:x", body="x" * 200)], f"t{round_}-{n}")
            s.start_turn(event_id, f"!{n % 7}:x")
            s.mark_sent(s.finish(event_id, [OutboxItem(0, f"r{event_id}", "!r:x", "m.room.message", {"body": "y" * 200})])[0].txn_id, "$e")
        s.compact(now=now + 2 * DAY, horizon=DAY)
        sizes.append(s.size_bytes())
    assert s.row_counts()["inbox"] == 7  # each room's newest
    assert s.row_counts()["outbox"] == s.row_counts()["turns"] == 0
    assert max(sizes[1:]) <= sizes[0] * 1.1
    s.close()
