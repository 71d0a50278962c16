"""Intensity over a sliding window, and what happens when it runs out: escalate or park."""

from __future__ import annotations

import pytest
import trio

import lambda_actors as la
from runtime_probes import Boom, Crash, Journal, spec


async def _crash_at(sup: la.Supervisor, when: float, path: str) -> None:
    await trio.sleep_until(when)
    assert sup.kill(path), f"{path} was not running at {when}"
    await trio.testing.wait_all_tasks_blocked()


async def test_restarts_within_the_intensity_are_allowed(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)], intensity=2, period=10) as sup:
        await _crash_at(sup, 1, "t/w")
        await _crash_at(sup, 2, "t/w")
        assert sup.child_state("w").restarts == 2
        assert sup.statistics().restarts_in_window == 2


async def test_one_restart_too_many_within_the_period_escalates_out_of_the_root(autojump_clock):
    journal = Journal()
    with pytest.raises(la.IntensityExceeded) as info:
        async with la.open_supervisor("t", [spec("w", journal), spec("other", journal)],
                                      intensity=2, period=10) as sup:
            other = sup.address("other")
            await _crash_at(sup, 1, "t/w")
            await _crash_at(sup, 2, "t/w")
            await _crash_at(sup, 3, "t/w")
            await trio.sleep_forever()  # the escalation cancels the body
    assert info.value.child == "w"
    assert isinstance(info.value.reason, la.ActorKilled)
    assert "on_exhausted" in str(info.value)
    assert trio.current_time() == 3
    assert journal.names("stop") == ["w", "w", "w", "other"]
    with pytest.raises(la.ActorStopped):
        other.send_nowait("the tree is gone")


async def test_restarts_older_than_the_period_are_forgotten(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)], intensity=2, period=10) as sup:
        await _crash_at(sup, 0, "t/w")
        await _crash_at(sup, 5, "t/w")
        await _crash_at(sup, 10.5, "t/w")  # the one at 0 is older than one period: forgotten
        await _crash_at(sup, 15.5, "t/w")  # the one at 5 likewise
        assert sup.child_state("w").restarts == 4
        assert sup.statistics().restarts_in_window == 2


async def test_a_restart_exactly_one_period_old_still_counts_as_in_otp(autojump_clock):
    # OTP's supervisor keeps a restart at t while t >= now - period.
    journal = Journal()
    with pytest.raises(la.IntensityExceeded):
        async with la.open_supervisor("t", [spec("w", journal)], intensity=1, period=10) as sup:
            await _crash_at(sup, 0, "t/w")
            await _crash_at(sup, 10, "t/w")  # 0 is exactly 10 old: two restarts in the window
    assert trio.current_time() == 10


async def test_intensity_zero_escalates_on_the_first_crash(autojump_clock):
    journal = Journal()
    with pytest.raises(la.IntensityExceeded):
        async with la.open_supervisor("t", [spec("w", journal)], intensity=0) as sup:
            await sup.address("w").send(Crash())
            await trio.sleep_forever()
    assert journal.count("start", "w") == 1


async def test_escalate_stops_the_subtree_in_reverse_order_and_the_parent_restarts_it(autojump_clock):
    """OTP: the exhausted supervisor terminates all its children (reverse start order),
    exits, and its own supervisor handles that exit like any child's crash."""
    journal = Journal()
    inner = la.SupervisorSpec(
        "inner", [spec("a", journal), spec("flappy", journal), spec("c", journal)],
        intensity=1, period=60, on_exhausted="escalate",
    )
    async with la.open_supervisor("t", [spec("before", journal), inner, spec("after", journal)]) as sup:
        flappy = sup.registry.lookup("t/inner/flappy")
        with sup.subscribe() as events:
            await flappy.send(Crash("1"))
            await events.wait_for(la.Restarted, path="t/inner/flappy")
            journal.entries.clear()
            await flappy.send(Crash("2"))
            escalated = await events.wait_for(la.Escalated, path="t/inner")
            exited = await events.wait_for(la.Exited, path="t/inner")
            await events.wait_for(la.Restarted, path="t/inner")
            await trio.testing.wait_all_tasks_blocked()
        assert escalated.child == "flappy"
        assert isinstance(exited.reason, la.IntensityExceeded)
        assert journal.names("stop") == ["flappy", "c", "a"]
        assert journal.names("start") == ["a", "flappy", "c"]
        assert sup.child_state("inner").restarts == 1
        assert journal.count("stop", "before") == journal.count("stop", "after") == 0
        assert await flappy.call("same address") == "same address"


async def test_park_stops_only_the_flapping_child_and_keeps_its_sibling_running(autojump_clock):
    journal = Journal()
    children = [spec("flappy", journal), spec("healthy", journal)]
    async with la.open_supervisor("t", children, on_exhausted="park", intensity=2, period=10,
                                  cool_down=30) as sup:
        flappy, healthy = sup.address("flappy"), sup.address("healthy")
        with sup.subscribe() as events:
            for when in (1, 2, 3):
                await _crash_at(sup, when, "t/flappy")
            parked = await events.wait_for(la.Parked, path="t/flappy")
        assert parked.retry_at == 33
        state = sup.child_state("flappy")
        assert (state.status, state.retry_at, state.retry_in, state.available) == (la.Status.PARKED, 33, 30, False)
        # The sibling is untouched and keeps answering while flappy is parked.
        await trio.sleep_until(20)
        assert await healthy.call("are you ok") == "are you ok"
        assert journal.count("start", "healthy") == 1 and journal.count("stop", "healthy") == 0
        assert sup.child_state("healthy").status is la.Status.RUNNING
        # Messages to the parked child are held for it.
        await flappy.send("held while parked")
        assert flappy.statistics().depth == 1


async def test_a_parked_child_is_retried_after_the_cool_down_with_a_fresh_budget(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("flappy", journal)], on_exhausted="park",
                                  intensity=1, period=10, cool_down=30) as sup:
        flappy = sup.address("flappy")
        with sup.subscribe() as events:
            await _crash_at(sup, 1, "t/flappy")
            await _crash_at(sup, 2, "t/flappy")
            await events.wait_for(la.Parked, path="t/flappy")
            await flappy.send("held")
            await events.wait_for(la.Unparked, path="t/flappy")
            assert trio.current_time() == 32
            assert await flappy.call("back") == "back"
            assert [d for _, d in journal.of("msg")] == ["held", "back"]
            await _crash_at(sup, 40, "t/flappy")  # one restart allowed again
            assert sup.child_state("flappy").status is la.Status.RUNNING
            await _crash_at(sup, 41, "t/flappy")
            parked = await events.wait_for(la.Parked, path="t/flappy")
            assert parked.retry_at == 71


async def test_park_counts_intensity_per_child_so_a_rare_crash_of_a_sibling_is_just_restarted(autojump_clock):
    journal = Journal()
    children = [spec("flappy", journal), spec("rare", journal)]
    async with la.open_supervisor("t", children, on_exhausted="park", intensity=2, period=10,
                                  cool_down=30) as sup:
        for when in (1, 2, 3):
            await _crash_at(sup, when, "t/flappy")
        await _crash_at(sup, 4, "t/rare")
        assert sup.child_state("flappy").status is la.Status.PARKED
        assert sup.child_state("rare").status is la.Status.RUNNING


async def test_parking_a_sub_supervisor_stops_its_subtree_and_spares_its_siblings(autojump_clock):
    journal = Journal()

    def agent(name: str) -> la.SupervisorSpec:
        return la.SupervisorSpec(name, [spec(f"{name}-conn", journal)], intensity=0)

    agents = la.SupervisorSpec("agents", [agent("agent-0"), agent("agent-1")],
                               on_exhausted="park", intensity=1, period=60, cool_down=120)
    async with la.open_supervisor("node", [agents]) as sup:
        agents_sup = sup.child_supervisor("agents")
        conn0 = sup.registry.lookup("node/agents/agent-0/agent-0-conn")
        conn1 = sup.registry.lookup("node/agents/agent-1/agent-1-conn")
        with sup.subscribe() as events:
            await conn0.send(Crash())  # agent-0 escalates; agents restarts it
            await events.wait_for(la.Restarted, path="node/agents/agent-0")
            await conn0.send(Crash())  # again: agents parks agent-0
            parked = await events.wait_for(la.Parked, path="node/agents/agent-0")
        state = agents_sup.child_state("agent-0")
        assert state.status is la.Status.PARKED and state.retry_at == parked.retry_at == 120
        assert journal.count("stop", "agent-0-conn") == 2
        assert await conn1.call("agent-1 fine") == "agent-1 fine"
        assert journal.count("stop", "agent-1-conn") == 0
        assert await conn0.call("after the cool-down", timeout=500) == "after the cool-down"
        assert trio.current_time() == 120


async def test_park_with_a_group_strategy_is_refused_as_impossible():
    with pytest.raises(la.ChildSpecError, match="park.*one_for_one"):
        async with la.open_supervisor("t", [], strategy="one_for_all", on_exhausted="park"):
            pass  # pragma: no cover


async def test_kill_reports_false_for_a_child_that_is_not_running(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, backoff=la.Backoff(min=5, max=5))]) as sup:
        assert sup.kill("t/w")
        await trio.testing.wait_all_tasks_blocked()
        assert sup.child_state("w").status is la.Status.BACKING_OFF
        assert not sup.kill("t/w")
        with pytest.raises(la.NoSuchActor):
            sup.kill("t/nobody")


async def test_a_crash_in_the_actor_is_its_exit_reason(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        with sup.subscribe() as events:
            await sup.address("w").send(Crash("why"))
            exited = await events.wait_for(la.Exited, path="t/w")
    assert isinstance(exited.reason, Boom) and str(exited.reason) == "why"
    assert not exited.normal and not exited.shutdown
