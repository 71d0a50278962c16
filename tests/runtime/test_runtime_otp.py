"""Where the runtime holds to OTP: restart storms yield, dynamic children stop
together, specs are kept until delete_child, and the status table."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import lambda_actors as la
from lambda_actors.runtime.state import TRANSITIONS, IllegalTransition, transition
from runtime_probes import Finish, Journal, spec


async def test_a_restart_storm_lets_a_sibling_make_progress(autojump_clock):
    starts = 0
    seen: list[int] = []  # the crasher's start count each time the sibling ran

    async def crash_at_once(ctx: la.ActorContext) -> None:
        nonlocal starts
        starts += 1
        raise RuntimeError("broken at start")  # before any checkpoint of its own

    async def sibling(ctx: la.ActorContext) -> None:
        while True:
            seen.append(starts)
            try:
                ctx.mailbox.receive_nowait()
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                return  # being stopped (busy, it never blocks: the mock clock would not move)
            await trio.sleep(0)

    async with la.open_supervisor("t", [la.ChildSpec("sibling", sibling)], intensity=500, period=60,
                                  on_exhausted="park", cool_down=3600) as sup:
        with sup.subscribe() as events:
            sup.start_child(la.ChildSpec("crasher", crash_at_once))
            await events.wait_for(la.Parked, path="t/crasher")
        assert starts == 501
        during = {n for n in seen if 1 <= n < starts}
        # The sibling ran all through the storm, not only after it (Trio's
        # batches may run two restarts between its turns, so not every one).
        assert len(during) >= starts // 2


async def test_fifty_slow_dynamic_children_stop_together_in_one_shutdown_time(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t") as sup:
        for i in range(50):
            sup.start_child(spec(f"d{i}", journal, shutdown=2.0, ignore_stop=True))
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
    # Each was given its own 2 s, all at the same time.
    assert trio.current_time() - began == pytest.approx(2.0)
    assert len(journal.of("stop")) == 50
    assert all(when == pytest.approx(began + 2.0) for _, when in journal.of("stop"))


async def test_static_children_still_stop_one_by_one_in_reverse_order_after_the_dynamic_ones(autojump_clock):
    journal = Journal()
    children = [spec(n, journal, shutdown=1.0, ignore_stop=True) for n in ("a", "b")]
    async with la.open_supervisor("t", children) as sup:
        sup.start_child(spec("d1", journal, shutdown=1.0, ignore_stop=True))
        sup.start_child(spec("d2", journal, shutdown=1.0, ignore_stop=True))
        await trio.testing.wait_all_tasks_blocked()
    stops = journal.of("stop")
    assert sorted(stops[:2]) == [("d1", 1.0), ("d2", 1.0)]
    assert stops[2:] == [("b", 2.0), ("a", 3.0)]


async def test_terminate_keeps_the_spec_restart_brings_it_back_at_the_same_address(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        w = sup.address("w")
        await sup.terminate_child("w")
        assert w.stopped and sup.child_state("w").status is la.Status.STOPPED
        with pytest.raises(la.ActorStopped):
            await w.send("while stopped")
        assert "t/w" not in sup.registry  # a stopped address is not handed out
        assert sup.restart_child("w") is w
        assert await w.call("again") == "again"
        assert sup.registry.lookup("t/w") is w
        assert journal.count("start", "w") == 2


async def test_restart_child_and_delete_child_refuse_a_child_that_is_not_stopped(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        with pytest.raises(la.ChildSpecError, match="not stopped"):
            sup.restart_child("w")
        with pytest.raises(la.ChildSpecError, match="terminate_child it first"):
            sup.delete_child("w")
        await sup.terminate_child("w")
        sup.delete_child("w")
        with pytest.raises(la.NoSuchActor):
            sup.child_state("w")
        assert "t/w" not in sup.registry


async def test_a_temporary_child_is_forgotten_when_it_ends_or_is_terminated(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t") as sup:
        ended = sup.start_child(spec("ended", journal, restart="temporary"))
        sup.start_child(spec("terminated", journal, restart="temporary"))
        await ended.send(Finish())
        await trio.testing.wait_all_tasks_blocked()
        await sup.terminate_child("terminated")
        assert sup.which_children() == []


async def test_a_transient_child_that_returned_keeps_its_spec_and_get_or_start_reuses_it(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [la.SupervisorSpec("conns")]) as sup:
        conns = sup.child_supervisor("conns")
        make = lambda: spec("chat-1", journal, restart="transient")  # noqa: E731
        first = sup.registry.get_or_start(("chat", 1), conns, make)
        for _ in range(20):  # idle, exits, is used again: nothing grows
            await first.send(Finish())
            await trio.testing.wait_all_tasks_blocked()
            assert conns.child_state("chat-1").status is la.Status.STOPPED
            assert sup.registry.get_or_start(("chat", 1), conns, make) is first
        await trio.testing.wait_all_tasks_blocked()
        assert conns.count_children().specs == 1
        assert len(sup.registry) == 2  # its path and ("chat", 1)
        assert journal.count("start", "chat-1") == 21


async def test_a_supervisors_dynamic_children_do_not_survive_its_restart(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [la.SupervisorSpec("sub", [spec("x", journal)])]) as sup:
        sub = sup.child_supervisor("sub")
        dyn = sub.start_child(spec("dyn", journal))
        sup.kill("t/sub")
        await trio.testing.wait_all_tasks_blocked()
        assert dyn.stopped and [c.name for c in sub.which_children()] == ["x"]


async def test_a_child_waits_in_its_own_status_before_it_starts_and_for_its_group(autojump_clock):
    journal = Journal()
    children = [spec("a", journal, backoff=la.Backoff(min=5, max=5)), spec("b", journal)]
    sub = la.SupervisorSpec("sub", children, strategy="one_for_all")
    async with la.open_supervisor("t", [sub]) as sup:
        inner = sup.child_supervisor("sub")
        await sup.terminate_child("sub")
        sup.restart_child("sub")
        # Revived, but its children have not been started yet.
        assert {c.status for c in inner.which_children()} == {la.Status.NOT_STARTED}
        await trio.testing.wait_all_tasks_blocked()
        assert {c.status for c in inner.which_children()} == {la.Status.RUNNING}
        # a's crash restarts the group after a's backoff: both wait, and say so.
        sup.kill("t/sub/a")
        await trio.testing.wait_all_tasks_blocked()
        assert [c.status for c in inner.which_children()] == [la.Status.BACKING_OFF, la.Status.BACKING_OFF]
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert [c.status for c in inner.which_children()] == [la.Status.RUNNING, la.Status.RUNNING]


def test_every_status_move_outside_the_table_is_refused_by_name():
    for old in la.Status:
        for new in la.Status:
            if old is new or new in TRANSITIONS[old]:
                assert transition("t/x", old, new) is new
            else:
                with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
                    transition("t/x", old, new)
    # A few that must never happen.
    for old, new in [(la.Status.STOPPED, la.Status.BACKING_OFF), (la.Status.RUNNING, la.Status.NOT_STARTED),
                     (la.Status.PARKED, la.Status.BACKING_OFF), (la.Status.STOPPING, la.Status.RUNNING)]:
        with pytest.raises(IllegalTransition):
            transition("t/x", old, new)
