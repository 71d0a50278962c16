"""Strategies, restart types, and the order and timeouts of shutdown."""

from __future__ import annotations

import pytest
import trio

import lambda_actors as la
from runtime_probes import Crash, Finish, Journal, spec


async def _crash_and_settle(sup: la.Supervisor, name: str, until: type = la.Restarted, path: str | None = None) -> None:
    with sup.subscribe() as events:
        await sup.address(name).send(Crash())
        await events.wait_for(until, path=path or f"{sup.path}/{name}")
        await trio.testing.wait_all_tasks_blocked()


async def test_one_for_one_restarts_only_the_crashed_child(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec(n, journal) for n in "abc"], strategy="one_for_one") as sup:
        await trio.testing.wait_all_tasks_blocked()
        await _crash_and_settle(sup, "b")
        assert journal.names("start") == ["a", "b", "c", "b"]
        assert journal.names("stop") == ["b"]


async def test_one_for_all_stops_the_others_in_reverse_order_then_restarts_all_in_order(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec(n, journal) for n in "abcd"], strategy="one_for_all") as sup:
        await trio.testing.wait_all_tasks_blocked()
        await _crash_and_settle(sup, "b", path="t/d")
        assert journal.names("stop") == ["b", "d", "c", "a"]
        assert journal.names("start") == ["a", "b", "c", "d", "a", "b", "c", "d"]


async def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec(n, journal) for n in "abcd"], strategy="rest_for_one") as sup:
        await trio.testing.wait_all_tasks_blocked()
        await _crash_and_settle(sup, "b", path="t/d")
        assert journal.names("stop") == ["b", "d", "c"]
        assert journal.names("start") == ["a", "b", "c", "d", "b", "c", "d"]


async def test_one_for_all_drops_temporary_siblings_instead_of_restarting_them(autojump_clock):
    journal = Journal()
    children = [spec("a", journal), spec("tmp", journal, restart="temporary"), spec("c", journal)]
    async with la.open_supervisor("t", children, strategy="one_for_all") as sup:
        await trio.testing.wait_all_tasks_blocked()
        tmp = sup.address("tmp")
        await _crash_and_settle(sup, "a", path="t/c")
        assert [c.name for c in sup.which_children()] == ["a", "c"]
        assert tmp.stopped
        assert journal.count("start", "tmp") == 1


async def test_group_restart_waits_the_crashed_childs_backoff(autojump_clock):
    journal = Journal()
    children = [spec("a", journal, backoff=la.Backoff(min=3, max=3)), spec("b", journal)]
    async with la.open_supervisor("t", children, strategy="one_for_all") as sup:
        await trio.testing.wait_all_tasks_blocked()
        with sup.subscribe() as events:
            await sup.address("a").send(Crash())
            backing = await events.wait_for(la.BackingOff, path="t/a")
            assert backing.delay == 3
            assert sup.child_state("b").status is la.Status.BACKING_OFF
            await events.wait_for(la.Restarted, path="t/b")
        assert trio.current_time() == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("restart", "trigger", "restarted"),
    [
        ("permanent", Crash(), True),
        ("permanent", Finish(), True),
        ("transient", Crash(), True),
        ("transient", Finish(), False),
        ("temporary", Crash(), False),
        ("temporary", Finish(), False),
    ],
)
async def test_restart_types_follow_otp(autojump_clock, restart, trigger, restarted):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, restart=restart)]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(trigger)
            exited = await events.wait_for(la.Exited, path="t/w")
            assert exited.normal == isinstance(trigger, Finish)
            await trio.testing.wait_all_tasks_blocked()
        assert journal.count("start", "w") == (2 if restarted else 1)
        assert addr.stopped is (not restarted)
        # As OTP: only a temporary child's spec goes; a transient that
        # returned stays, stopped, until restart_child or delete_child.
        kept = restarted or restart == "transient"
        assert ("w" in [c.name for c in sup.which_children()]) is kept
        if kept and not restarted:
            assert sup.child_state("w").status is la.Status.STOPPED


async def test_shutdown_stops_children_in_reverse_start_order(autojump_clock):
    journal = Journal()
    children = [spec(n, journal) for n in "abc"] + [
        la.SupervisorSpec("inner", [spec("x", journal), spec("y", journal)])
    ]
    async with la.open_supervisor("t", children) as sup:
        sup.start_child(spec("dyn", journal))
        await trio.testing.wait_all_tasks_blocked()
    assert journal.names("stop") == ["dyn", "y", "x", "c", "b", "a"]


async def test_a_child_that_ignores_the_stop_is_cancelled_after_its_shutdown_timeout(autojump_clock):
    journal = Journal()
    children = [spec("a", journal, shutdown=2.0), spec("stubborn", journal, shutdown=7.0, ignore_stop=True)]
    async with la.open_supervisor("t", children):
        await trio.testing.wait_all_tasks_blocked()
    stops = dict(journal.of("stop"))
    assert stops["stubborn"] == pytest.approx(7.0)  # cancelled at its timeout
    assert stops["a"] == pytest.approx(7.0)  # stopped (at once) only after it


async def test_shutdown_zero_cancels_at_once(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, shutdown=0, ignore_stop=True)]):
        await trio.testing.wait_all_tasks_blocked()
    assert journal.of("stop") == [("w", 0.0)]


async def test_terminate_child_respects_the_shutdown_timeout(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, shutdown=4.0, ignore_stop=True)]) as sup:
        await trio.testing.wait_all_tasks_blocked()
        with sup.subscribe() as events:
            await sup.terminate_child("w")
            exited = await events.wait_for(la.Exited, path="t/w")
        assert exited.shutdown
        assert trio.current_time() == pytest.approx(4.0)
        assert sup.count_children() == la.ChildCounts(specs=1, active=0, supervisors=0, workers=1)


async def test_a_nested_supervisor_restarts_its_static_children_with_their_addresses(autojump_clock):
    journal = Journal()
    inner = la.SupervisorSpec("inner", [spec("x", journal)], intensity=0)
    async with la.open_supervisor("t", [inner, spec("sibling", journal)]) as sup:
        x = sup.registry.lookup("t/inner/x")
        with sup.subscribe() as events:
            await x.send(Crash())  # inner has intensity 0: it escalates to t
            await events.wait_for(la.Escalated, path="t/inner")
            await events.wait_for(la.Restarted, path="t/inner")
            await events.wait_for(la.Restarted, path="t/inner/x")
        assert sup.registry.lookup("t/inner/x") is x
        assert await x.call("alive") == "alive"
        assert journal.count("start", "sibling") == 1


async def test_a_restarted_supervisor_starts_its_children_with_a_fresh_backoff(autojump_clock):
    journal = Journal()
    inner = la.SupervisorSpec("inner", [spec("x", journal, backoff=la.Backoff(min=1, max=100))],
                              intensity=2, period=1000)
    async with la.open_supervisor("t", [inner], intensity=10) as sup:
        with sup.subscribe() as events:
            for expected in (1, 2):
                sup.kill("t/inner/x")
                assert (await events.wait_for(la.BackingOff, path="t/inner/x")).delay == expected
                await events.wait_for(la.Restarted, path="t/inner/x")
            sup.kill("t/inner/x")  # the third restart is one too many: inner escalates
            await events.wait_for(la.Escalated, path="t/inner")
            await events.wait_for(la.Restarted, path="t/inner/x")
            sup.kill("t/inner/x")
            fresh = await events.wait_for(la.BackingOff, path="t/inner/x")
        assert fresh.delay == 1
