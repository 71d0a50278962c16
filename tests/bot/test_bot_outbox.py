"""The outbox: nobody waits for it, rows nobody told it about are still sent,
per-room order, idle per-room senders exit."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import trio

import lambda_actors as la
from lambda_actors.bot.actors.outbox import outbox_actor, tell_outbox
from lambda_actors.bot.actors.services import OUTBOX_PATH
from lambda_actors.bot.store import OutboxItem, Store


class RecordingClient:
    """Stands in for the homeserver's send endpoint: records, answers an event id."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, room_id, event_type, content, txn_id):
        await trio.sleep(0.01)
        self.sent.append((room_id, content["body"]))
        return f"$ev-{txn_id}"


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "bot.sqlite3")
    yield s
    s.close()


def _row(txn, room="!r:x", body=None):
    return OutboxItem(0, txn, room, "m.room.message", {"body": body or txn})


def _sender_tasks() -> int:
    def walk(task):
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    return sum(1 for t in walk(trio.lowlevel.current_root_task()) if t.name.endswith("_send_room"))


async def _until(predicate):
    with trio.fail_after(60):  # virtual time: fails only if it never happens
        while not predicate():
            await trio.sleep(0.05)


def _outbox(store, client, **kwargs):
    return la.ChildSpec("outbox", functools.partial(outbox_actor, **kwargs), args=(store, client), mailbox_capacity=1)


async def test_rows_are_sent_in_order_per_room_and_told_without_waiting(autojump_clock, store):
    client = RecordingClient()
    async with la.open_supervisor("node", [_outbox(store, client)]) as sup:
        ctx = SimpleNamespace(registry=sup.registry)
        # Three tells in one tick: the mailbox holds one, the others are
        # refused, and nothing waits. The store has every row regardless.
        for rows in (["a1", "a2"], ["b1"], ["a3"]):
            await tell_outbox(ctx, store.enqueue([_row(t, room="!" + t[0] + ":x") for t in rows]))
        assert sup.registry.lookup(OUTBOX_PATH).statistics().blocked_senders == 0
        await _until(lambda: len(client.sent) == 4)
        assert [body for room, body in client.sent if room == "!a:x"] == ["a1", "a2", "a3"]
        assert store.pending_sends() == []
        assert store.sent_event_id("a3") == "$ev-a3"


async def test_a_row_told_twice_is_sent_once(autojump_clock, store):
    client = RecordingClient()
    async with la.open_supervisor("node", [_outbox(store, client)]) as sup:
        ctx = SimpleNamespace(registry=sup.registry)
        queued = store.enqueue([_row("once")])
        await tell_outbox(ctx, queued)
        await _until(lambda: client.sent)
        await tell_outbox(ctx, queued)  # e.g. held in the mailbox across a restart
        await trio.sleep(10)
        assert client.sent == [("!r:x", "once")]


async def test_an_idle_room_sender_exits_and_a_new_send_starts_another(autojump_clock, store):
    client = RecordingClient()
    async with la.open_supervisor("node", [_outbox(store, client, idle_exit=30.0)]) as sup:
        ctx = SimpleNamespace(registry=sup.registry)
        for n in range(20):
            await tell_outbox(ctx, store.enqueue([_row(f"r{n}", room=f"!{n}:x")]))
            await trio.sleep(0)
        await _until(lambda: len(client.sent) == 20)
        assert _sender_tasks() == 20
        await _until(lambda: _sender_tasks() == 0)
        await tell_outbox(ctx, store.enqueue([_row("again", room="!3:x")]))
        await _until(lambda: ("!3:x", "again") in client.sent)
        assert _sender_tasks() == 1


async def test_a_stopping_outbox_sends_what_was_queued_last(autojump_clock, store):
    client = RecordingClient()
    async with la.open_supervisor("node", [_outbox(store, client)]):
        store.enqueue([_row("last words")])  # told nobody
    assert client.sent == [("!r:x", "last words")]
