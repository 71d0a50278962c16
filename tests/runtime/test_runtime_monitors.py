"""Monitors (ctx.monitor -> Down), and the whole-tree views tree_statistics() and walk()."""

from __future__ import annotations

import trio
import trio.testing

import lambda_actors as la
from runtime_probes import Crash, Finish, Journal, spec


class Watch:
    """Tell the watcher to monitor an address (or stop monitoring it)."""

    def __init__(self, address: la.Address, stop: bool = False) -> None:
        self.address = address
        self.stop = stop


async def watcher(ctx: la.ActorContext, seen: list[la.Down], starts: list[int]) -> None:
    """Monitors what it is told to; records every Down; answers calls with None."""
    starts.append(ctx.attempt)
    async for msg in ctx.mailbox:
        body = msg.msg if isinstance(msg, la.Request) else msg
        if isinstance(body, Watch):
            if body.stop:
                ctx.demonitor(body.address)
            else:
                ctx.monitor(body.address)
        elif isinstance(body, la.Down):
            seen.append(body)
        elif isinstance(body, Crash):
            raise RuntimeError("watcher crash")
        if isinstance(msg, la.Request):
            msg.reply(None)


def watcher_spec(seen: list[la.Down], starts: list[int] | None = None, **policy) -> la.ChildSpec:
    return la.ChildSpec("watcher", watcher, (seen, [] if starts is None else starts), **policy)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_a_crash_of_the_watched_actor_posts_down_with_its_reason(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen)]) as sup:
        await sup.address("watcher").call(Watch(sup.address("w")))
        await sup.address("w").send(Crash("bang"))
        await settle()
        assert seen == [la.Down("t/w", "Boom('bang')")]
        assert seen[0].crashed
        # A monitor fires once: the restarted incarnation is not watched.
        await sup.address("w").send(Crash("again"))
        await settle()
        assert len(seen) == 1


async def test_a_normal_exit_a_kill_and_a_terminate_each_say_so(autojump_clock):
    journal, seen = Journal(), []
    children = [spec("a", journal), spec("b", journal), spec("c", journal), watcher_spec(seen)]
    async with la.open_supervisor("t", children, intensity=10) as sup:
        for name in "abc":
            await sup.address("watcher").call(Watch(sup.address(name)))
        await sup.address("a").send(Finish())
        await settle()
        sup.kill("t/b", "testing")
        await settle()
        await sup.terminate_child("c")
        await settle()
        assert [(d.path, d.reason) for d in seen] == [
            ("t/a", "normal"),
            ("t/b", repr(la.ActorKilled("t/b", "testing"))),
            ("t/c", "shutdown"),
        ]
        assert [d.crashed for d in seen] == [False, True, False]


async def test_watching_a_stopped_address_posts_down_at_once(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen)]) as sup:
        gone = sup.address("w")
        await sup.terminate_child("w")
        await sup.address("watcher").call(Watch(gone))
        await settle()
        assert seen == [la.Down("t/w", "noproc")]


async def test_down_reaches_a_full_mailbox_and_never_blocks_the_supervisor(autojump_clock):
    journal, seen = Journal(), []
    hold = trio.Event()

    async def slow_watcher(ctx: la.ActorContext) -> None:
        msg = await ctx.mailbox.receive()
        ctx.monitor(msg.msg)
        msg.reply(None)
        await hold.wait()  # stop reading: the mailbox fills up
        async for m in ctx.mailbox:
            seen.append(m)

    children = [spec("w", journal), la.ChildSpec("slow", slow_watcher, mailbox_capacity=2, overflow="fail")]
    async with la.open_supervisor("t", children) as sup:
        await sup.address("slow").call(sup.address("w"))
        sup.address("slow").send_nowait("one")
        sup.address("slow").send_nowait("two")
        with trio.testing.assert_no_checkpoints():
            # The supervisor runs the exit path here; it must not wait for room.
            sup.kill("t/w")
        await settle()
        assert journal.count("start", "w") == 2  # the supervisor went on and restarted it
        assert sup.address("slow").statistics().depth == 3
        hold.set()
        await settle()
        assert seen == ["one", "two", la.Down("t/w", repr(la.ActorKilled("t/w")))]


async def test_demonitor_removes_the_monitor(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen)]) as sup:
        await sup.address("watcher").call(Watch(sup.address("w")))
        await sup.address("watcher").call(Watch(sup.address("w"), stop=True))
        sup.kill("t/w")
        await settle()
        assert seen == []


async def test_monitoring_twice_gives_one_down(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen)]) as sup:
        await sup.address("watcher").call(Watch(sup.address("w")))
        await sup.address("watcher").call(Watch(sup.address("w")))
        sup.kill("t/w")
        await settle()
        assert len(seen) == 1


async def test_a_restarted_watcher_has_lost_its_monitors(autojump_clock):
    journal, seen, starts = Journal(), [], []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen, starts)]) as sup:
        await sup.address("watcher").call(Watch(sup.address("w")))
        await sup.address("watcher").send(Crash())
        await settle()
        assert starts == [0, 1]
        sup.kill("t/w")
        await settle()
        assert seen == []


async def test_a_monitor_on_a_backing_off_actor_watches_its_next_incarnation(autojump_clock):
    journal, seen = Journal(), []
    children = [spec("w", journal, backoff=la.Backoff(min=10, max=10)), watcher_spec(seen)]
    async with la.open_supervisor("t", children) as sup:
        sup.kill("t/w")
        await settle()
        assert sup.child_state("w").status is la.Status.BACKING_OFF
        await sup.address("watcher").call(Watch(sup.address("w")))
        assert seen == []
        await trio.sleep(10)  # the next incarnation starts
        await settle()
        assert journal.count("start", "w") == 2 and seen == []
        await sup.address("w").send(Finish())
        await settle()
        assert seen == [la.Down("t/w", "normal")]


async def test_the_watched_actor_removed_while_waiting_tells_its_watchers(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [watcher_spec(seen)]) as sup:
        target = sup.start_child(spec("d", journal, backoff=la.Backoff(min=10, max=10)))
        await settle()
        sup.kill("t/d")
        await settle()
        await sup.address("watcher").call(Watch(target))
        await sup.terminate_child("d")
        await settle()
        assert seen == [la.Down("t/d", "shutdown")]


async def test_a_watcher_stopped_for_good_is_simply_not_told(autojump_clock):
    journal, seen = Journal(), []
    async with la.open_supervisor("t", [spec("w", journal), watcher_spec(seen)]) as sup:
        await sup.address("watcher").call(Watch(sup.address("w")))
        await sup.terminate_child("watcher")
        sup.kill("t/w")
        await settle()
        assert journal.count("start", "w") == 2 and seen == []


async def test_tree_statistics_cover_every_supervisor_with_restarts_and_parks(autojump_clock):
    journal = Journal()
    tree = [
        la.SupervisorSpec("agents", [spec("a", journal)], on_exhausted="park", intensity=0, cool_down=30),
        la.SupervisorSpec("rooms", [la.SupervisorSpec("inner", [spec("r", journal)])]),
    ]
    async with la.open_supervisor("t", tree) as sup:
        sup.kill("t/agents/a")
        sup.kill("t/rooms/inner/r")
        await settle()
        stats = {s.path: s for s in sup.tree_statistics()}
        assert list(stats) == ["t", "t/agents", "t/rooms", "t/rooms/inner"]
        assert (stats["t/agents"].parks, stats["t/agents"].restarts, stats["t/agents"].parked) == (1, 0, 1)
        assert (stats["t/rooms/inner"].restarts, stats["t/rooms/inner"].parks) == (1, 0)
        assert (stats["t"].restarts, stats["t"].parks) == (0, 0)


async def test_walk_lists_every_child_of_the_tree_with_its_state(autojump_clock):
    journal = Journal()
    tree = [
        la.SupervisorSpec("agents", [spec("a", journal)], on_exhausted="park", intensity=0, cool_down=30),
        spec("solo", journal),
    ]
    async with la.open_supervisor("t", tree) as sup:
        sup.kill("t/agents/a")
        await settle()
        walked = sup.walk()
        assert [path for path, _ in walked] == ["t/agents", "t/agents/a", "t/solo"]
        states = dict(walked)
        assert states["t/agents"].supervisor and states["t/agents"].status is la.Status.RUNNING
        assert states["t/agents/a"].status is la.Status.PARKED
        assert states["t/agents/a"].retry_in == 30
        assert states["t/solo"].status is la.Status.RUNNING
