"""Observability: the event stream, structlog context, statistics; and embedding."""

from __future__ import annotations

import pytest
import structlog
import trio

import lambda_actors as la
from runtime_probes import Crash, Journal, spec


async def test_events_arrive_in_order_with_their_details(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, backoff=la.Backoff(min=2, max=2))]) as sup:
        with sup.subscribe() as events:
            await sup.address("w").send(Crash())
            await trio.sleep(5)
            got = events.pending()
    assert [type(e) for e in got] == [la.Exited, la.BackingOff, la.Restarted]
    exited, backing, restarted = got
    assert (exited.path, exited.time, exited.normal) == ("t/w", 0, False)
    assert (backing.delay, backing.retry_at) == (2, 2)
    assert (restarted.time, restarted.attempt) == (2, 1)


async def test_a_subscription_sees_only_its_subtree(autojump_clock):
    journal = Journal()
    tree = [la.SupervisorSpec("a", [spec("x", journal)]), la.SupervisorSpec("b", [spec("y", journal)])]
    async with la.open_supervisor("t", tree) as sup:
        with sup.child_supervisor("a").subscribe() as only_a:
            sup.kill("t/b/y")
            sup.kill("t/a/x")
            await trio.testing.wait_all_tasks_blocked()
            paths = {e.path for e in only_a.pending()}
    assert paths == {"t/a/x"}


async def test_a_slow_subscriber_loses_the_oldest_events_and_counts_them(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)], intensity=100) as sup:
        with sup.subscribe(buffer=4) as events:
            for _ in range(5):
                sup.kill("t/w")
                await trio.testing.wait_all_tasks_blocked()
            assert events.lost == 6  # 10 events (Exited + Restarted each), 4 kept
            assert len(events.pending()) == 4


async def test_a_closed_stream_ends_its_iteration(autojump_clock):
    async with la.open_supervisor("t") as sup:
        events = sup.subscribe()
        events.close()
        assert [e async for e in events] == []


async def test_actor_logs_carry_the_actor_path_also_from_its_helper_tasks(autojump_clock):
    async def chatty(ctx: la.ActorContext) -> None:
        ctx.log.info("direct")

        async def helper() -> None:
            structlog.get_logger().info("from helper")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(helper)
        await trio.sleep_forever()

    with structlog.testing.capture_logs(processors=[la.add_actor_path]) as logs:
        tree = [la.SupervisorSpec("agents", [la.ChildSpec("conn-17", chatty, shutdown=0)])]
        async with la.open_supervisor("node", tree):
            await trio.testing.wait_all_tasks_blocked()
            assert la.current_actor_path() is None
    by_event = {entry["event"]: entry for entry in logs}
    assert by_event["direct"]["actor"] == "node/agents/conn-17"
    assert by_event["from helper"]["actor"] == "node/agents/conn-17"


async def test_crashes_are_logged_with_their_path_and_reason(autojump_clock):
    with structlog.testing.capture_logs() as logs:
        async with la.open_supervisor("t", [spec("w", Journal())]) as sup:
            await sup.address("w").send(Crash("kaput"))
            await trio.testing.wait_all_tasks_blocked()
    crash = [e for e in logs if e["event"] == "actor crashed"]
    assert crash and crash[0]["actor"] == "t/w" and "kaput" in crash[0]["reason"]


async def test_supervisor_statistics_count_children_and_restarts(autojump_clock):
    journal = Journal()
    children = [spec("a", journal), spec("b", journal, backoff=la.Backoff(min=9, max=9))]
    async with la.open_supervisor("t", children, intensity=10, period=60) as sup:
        sup.kill("t/a")
        sup.kill("t/b")
        await trio.testing.wait_all_tasks_blocked()
        stats = sup.statistics()
    assert (stats.children, stats.running, stats.backing_off, stats.parked) == (2, 1, 1, 0)
    assert (stats.restarts, stats.restarts_in_window, stats.intensity, stats.period) == (2, 2, 10, 60)


async def test_the_tree_runs_as_a_task_with_nursery_start(autojump_clock):
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await nursery.start(la.serve_supervisor, la.SupervisorSpec("svc", [spec("w", journal)]))
        assert await sup.address("w").call("hi") == "hi"
        await sup.aclose()
    assert journal.names("stop") == ["w"]
    with pytest.raises(la.ActorStopped):
        sup.start_child(spec("x", journal))


async def test_cancelling_the_host_stops_the_tree_and_its_addresses(autojump_clock):
    journal = Journal()
    with trio.move_on_after(5):
        async with la.open_supervisor("t", [spec("w", journal)]) as sup:
            addr = sup.address("w")
            await trio.sleep_forever()
    assert journal.of("stop") == [("w", 5)]
    with pytest.raises(la.ActorStopped):
        await addr.send("after")


async def test_an_error_in_the_host_body_propagates_unwrapped(autojump_clock):
    with pytest.raises(KeyError, match="mine"):
        async with la.open_supervisor("t", [spec("w", Journal())]):
            raise KeyError("mine")


async def test_structlogs_default_contextvars_merge_adds_the_actor_path(autojump_clock):
    async def quiet(ctx: la.ActorContext) -> None:
        structlog.get_logger().info("plain call")
        await trio.sleep_forever()

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with la.open_supervisor("node", [la.ChildSpec("q", quiet, shutdown=0)]):
            await trio.testing.wait_all_tasks_blocked()
    assert [e["actor"] for e in logs if e["event"] == "plain call"] == ["node/q"]


async def test_started_is_emitted_for_each_new_child_in_start_order(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [la.SupervisorSpec("s")]) as sup:
        with sup.subscribe() as events:
            sub = sup.child_supervisor("s")
            sub.start_child(spec("a", journal))
            sub.start_child(la.SupervisorSpec("inner", [spec("x", journal)]))
            await trio.testing.wait_all_tasks_blocked()
            started = [e.path for e in events.pending() if isinstance(e, la.Started)]
    assert started == ["t/s/a", "t/s/inner", "t/s/inner/x"]


async def test_a_tree_run_with_nursery_start_raises_its_escalation_from_the_task(autojump_clock):
    journal = Journal()
    with pytest.RaisesGroup(la.IntensityExceeded):
        async with trio.open_nursery() as nursery:
            tree = la.SupervisorSpec("svc", [spec("w", journal)], intensity=0)
            sup = await nursery.start(la.serve_supervisor, tree)
            addr = sup.address("w")
            await addr.send(Crash())
    assert addr.stopped
