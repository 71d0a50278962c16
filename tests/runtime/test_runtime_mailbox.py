"""Stable addresses: messages held across restarts, overflow policies, stopped actors."""

from __future__ import annotations

import pytest
import trio

import lambda_actors as la
from runtime_probes import Crash, Hang, Journal, spec


async def test_messages_sent_while_backing_off_are_held_and_delivered_in_order(autojump_clock):
    journal = Journal()
    backoff = la.Backoff(min=10.0, max=10.0)
    async with la.open_supervisor("t", [spec("w", journal, backoff=backoff)]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff, path="t/w")
        assert sup.child_state("w").status is la.Status.BACKING_OFF
        for i in range(5):
            await addr.send(i)
        assert addr.statistics().depth == 5
        assert journal.of("msg") == []
        assert await addr.call("after", timeout=60) == "after"
        assert trio.current_time() == pytest.approx(10.0)
    assert journal.of("msg") == [("w", 0), ("w", 1), ("w", 2), ("w", 3), ("w", 4), ("w", "after")]


async def test_address_is_the_same_object_across_restarts(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        before = sup.address("w")
        with sup.subscribe() as events:
            await before.send(Crash())
            await events.wait_for(la.Restarted, path="t/w")
        assert sup.address("w") is before
        assert sup.registry.lookup("t/w") is before
        assert await before.call("still here") == "still here"


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_drop_policies_count_and_report_each_drop(autojump_clock, policy):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=3, overflow=policy, backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff, path="t/w")
            for i in range(5):
                await addr.send(i)
            drops = [e for e in events.pending() if isinstance(e, la.MessageDropped)]
            stats = addr.statistics()
            assert (stats.depth, stats.peak, stats.dropped) == (3, 3, 2)
            assert [d.reason for d in drops] == [policy, policy]
            await events.wait_for(la.Restarted, path="t/w")
        await addr.call("sync", timeout=60)
    kept = [d for _, d in journal.of("msg") if d != "sync"]
    if policy == "drop_newest":
        assert [d.message for d in drops] == [3, 4]
        assert kept == [0, 1, 2]
    else:
        assert [d.message for d in drops] == [0, 1]
        assert kept == [2, 3, 4]


async def test_fail_policy_raises_mailbox_full_to_the_sender(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=2, overflow="fail", backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        await addr.send(1)
        await addr.send(2)
        with pytest.raises(la.MailboxFull, match="mailbox_capacity"):
            await addr.send(3)
        assert addr.statistics().depth == 2


async def test_block_policy_waits_for_room_then_delivers(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1, overflow="block", backoff=la.Backoff(min=7, max=7))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        await addr.send("first")
        assert addr.statistics().depth == 1
        await addr.send("second")  # blocks until the restarted worker takes "first"
        assert trio.current_time() == pytest.approx(7.0)
        await addr.call("sync")
    assert [d for _, d in journal.of("msg")] == ["first", "second", "sync"]


async def test_send_nowait_under_block_raises_mailbox_full_instead_of_waiting(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1, backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            addr.send_nowait(Crash())
            await events.wait_for(la.BackingOff)
        addr.send_nowait(1)
        with pytest.raises(la.MailboxFull):
            addr.send_nowait(2)


async def test_send_to_a_stopped_actor_raises_actor_stopped_not_a_trio_error(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, restart="temporary")]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.Exited, path="t/w")
        assert addr.stopped
        with pytest.raises(la.ActorStopped, match="t/w"):
            await addr.send("late")
        with pytest.raises(la.ActorStopped):
            addr.send_nowait("late")
        with pytest.raises(la.ActorStopped):
            await addr.call("late")
        with pytest.raises(la.NoSuchActor):
            sup.child_state("w")


async def test_blocked_senders_get_actor_stopped_when_the_actor_stops_for_good(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1)
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        await addr.send(Hang())  # the worker takes it and hangs
        await addr.send("fills the mailbox")
        outcome: list[BaseException] = []

        async def blocked_sender() -> None:
            try:
                await addr.send("blocked")
            except la.ActorStopped as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert addr.statistics().blocked_senders == 1
            await sup.terminate_child("w")
        assert len(outcome) == 1


async def test_messages_left_when_an_actor_stops_for_good_are_counted_and_reported(autojump_clock):
    journal = Journal()
    child = spec("w", journal, shutdown=0, backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
            await addr.send("a")
            await addr.send("b")
            await sup.terminate_child("w")
            dropped = [e for e in events.pending() if isinstance(e, la.MessageDropped)]
        assert [(d.reason, d.message) for d in dropped] == [("stopped", "a"), ("stopped", "b")]
        assert addr.statistics().dropped == 2


async def test_clean_stop_drains_held_messages_before_the_actor_ends(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        addr = sup.address("w")
        for i in range(3):
            addr.send_nowait(i)
    assert [d for _, d in journal.of("msg")] == [0, 1, 2]
    with pytest.raises(la.ActorStopped):
        addr.send_nowait(4)


async def test_mailbox_statistics_track_depth_peak_and_sent(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, backoff=la.Backoff(min=1, max=1))]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        for i in range(4):
            await addr.send(i)
        stats = addr.statistics()
        assert (stats.depth, stats.peak, stats.capacity, stats.overflow) == (4, 4, 1000, "block")
        await addr.call("sync")  # held too: the peak becomes 5
        stats = addr.statistics()
        assert (stats.depth, stats.peak, stats.sent, stats.reader_waiting) == (0, 5, 6, True)


async def test_a_second_reader_of_one_mailbox_is_refused(autojump_clock):
    errors: list[BaseException] = []

    async def two_readers(ctx: la.ActorContext) -> None:
        async def read() -> None:
            try:
                await ctx.mailbox.receive()
            except trio.BusyResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    async with la.open_supervisor("t", [la.ChildSpec("r", two_readers, restart="temporary")]):
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 1
    assert "already reading" in str(errors[0])
