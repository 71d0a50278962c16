"""``call``: replies, timeouts, and failing at once when the callee goes away."""

from __future__ import annotations

import pytest
import trio

import lambda_actors as la
from lambda_actors.runtime.deadlines import CallDeadlines
from runtime_probes import Boom, Crash, Hang, Journal, spec


async def test_call_returns_the_reply(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        assert await sup.address("w").call({"q": 1}) == {"q": 1}


async def test_call_times_out_after_the_policy_default(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, call_timeout=3.0)]) as sup:
        with pytest.raises(la.CallTimeout, match="3s") as info:
            await sup.address("w").call(Hang())
        assert isinstance(info.value, trio.TooSlowError)
        assert trio.current_time() == pytest.approx(3.0)
        await sup.terminate_child("w")


async def test_call_timeout_argument_overrides_the_default(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, call_timeout=3.0)]) as sup:
        with pytest.raises(la.CallTimeout):
            await sup.address("w").call(Hang(), timeout=0.5)
        assert trio.current_time() == pytest.approx(0.5)
        await sup.terminate_child("w")


async def test_call_fails_at_once_when_the_callee_crashes_while_holding_it(autojump_clock):
    crashed_holding = trio.Event()

    async def holder(ctx: la.ActorContext) -> None:
        async for req in ctx.mailbox:
            if req.msg == "hold":
                held = req  # keep it unanswered
                continue
            if req.msg == "crash":
                assert not held.answered
                crashed_holding.set()
                raise Boom("crash while holding")
            req.reply("ok")

    async with la.open_supervisor("t", [la.ChildSpec("h", holder, call_timeout=100)]) as sup:
        addr = sup.address("h")
        result: list[BaseException] = []

        async def caller() -> None:
            try:
                await addr.call("hold")
            except la.CallAborted as exc:
                result.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            addr.send_nowait(la.Request("crash"))
        assert crashed_holding.is_set()
        assert len(result) == 1
        assert isinstance(result[0].reason, Boom)
        assert trio.current_time() == 0.0  # not after the 100 s timeout
        assert await addr.call("again") == "ok"


async def test_call_in_progress_fails_at_once_when_the_callee_is_killed(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)]) as sup:
        addr = sup.address("w")

        async def kill_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            assert sup.kill("t/w", note="chaos")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(la.CallAborted) as info:
                await addr.call(Hang(), timeout=50)
        assert isinstance(info.value.reason, la.ActorKilled)
        assert trio.current_time() == 0.0


async def test_call_fails_at_once_when_a_sibling_crash_restarts_the_callee(autojump_clock):
    journal = Journal()
    children = [spec("a", journal), spec("b", journal, shutdown=1.0)]
    async with la.open_supervisor("t", children, strategy="one_for_all") as sup:
        b = sup.address("b")

        async def crash_sibling() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await sup.address("a").send(Crash())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_sibling)
            with pytest.raises(la.CallAborted) as info:
                await b.call(Hang(), timeout=50)
        assert info.value.reason is None  # b was stopped by its supervisor, not crashed
        assert trio.current_time() == pytest.approx(1.0)  # b's shutdown timeout, not the call's


async def test_request_fail_raises_the_callees_exception_in_the_caller(autojump_clock):
    async def refuser(ctx: la.ActorContext) -> None:
        async for req in ctx.mailbox:
            req.fail(PermissionError(f"no {req.msg}"))

    async with la.open_supervisor("t", [la.ChildSpec("r", refuser)]) as sup:
        with pytest.raises(PermissionError, match="no entry"):
            await sup.address("r").call("entry")


async def test_request_held_in_the_mailbox_across_a_restart_is_answered_by_the_next_incarnation(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, backoff=la.Backoff(min=2, max=2))]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        assert await addr.call("queued while down", timeout=10) == "queued while down"
        assert trio.current_time() == pytest.approx(2.0)


async def test_late_reply_after_a_timeout_is_ignored(autojump_clock):
    replied = trio.Event()

    async def slow(ctx: la.ActorContext) -> None:
        async for req in ctx.mailbox:
            await trio.sleep(5)
            assert req.abandoned
            req.reply("too late")  # must not raise or reach anyone
            replied.set()

    async with la.open_supervisor("t", [la.ChildSpec("s", slow)]) as sup:
        with pytest.raises(la.CallTimeout):
            await sup.address("s").call("x", timeout=1)
        await replied.wait()


async def test_answering_twice_is_an_error_in_the_callee(autojump_clock):
    seen: list[BaseException] = []

    async def twice(ctx: la.ActorContext) -> None:
        async for req in ctx.mailbox:
            req.reply(1)
            try:
                req.reply(2)
            except RuntimeError as exc:
                seen.append(exc)

    async with la.open_supervisor("t", [la.ChildSpec("d", twice)]) as sup:
        assert await sup.address("d").call("x") == 1
        await trio.testing.wait_all_tasks_blocked()
    assert len(seen) == 1 and "already answered" in str(seen[0])


async def test_requests_dropped_by_drop_oldest_fail_their_caller(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1, overflow="drop_oldest", backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        failures: list[BaseException] = []

        async def early_call() -> None:
            try:
                await addr.call("early", timeout=60)
            except la.MailboxFull as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(early_call)
            await trio.testing.wait_all_tasks_blocked()
            await addr.send("pushes it out")
        assert len(failures) == 1
        assert trio.current_time() == 0.0


async def test_a_call_under_drop_newest_on_a_full_mailbox_raises_mailbox_full(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1, overflow="drop_newest", backoff=la.Backoff(min=5, max=5))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        await addr.send("fills it")
        with pytest.raises(la.MailboxFull):
            await addr.call("no room")


async def test_a_call_blocked_on_a_full_mailbox_times_out_without_leaving_its_request(autojump_clock):
    journal = Journal()
    child = spec("w", journal, mailbox_capacity=1, backoff=la.Backoff(min=50, max=50))
    async with la.open_supervisor("t", [child]) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.BackingOff)
        await addr.send("fills it")
        with pytest.raises(la.CallTimeout):
            await addr.call("no room", timeout=2)
        assert trio.current_time() == pytest.approx(2)
        assert addr.statistics().depth == 1
        assert addr.statistics().blocked_senders == 0


async def test_a_call_to_a_parked_actor_times_out_at_its_deadline(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal)], on_exhausted="park", intensity=0,
                                  cool_down=100) as sup:
        addr = sup.address("w")
        with sup.subscribe() as events:
            await addr.send(Crash())
            await events.wait_for(la.Parked)
        with pytest.raises(la.CallTimeout):
            await addr.call("anyone?", timeout=7)
        assert trio.current_time() == pytest.approx(7)
        assert await addr.call("after the cool-down", timeout=200) == "after the cool-down"
        assert trio.current_time() == pytest.approx(100)


async def test_many_calls_with_timeouts_keep_the_deadline_heap_bounded(autojump_clock):
    deadlines = CallDeadlines()
    for i in range(10_000):
        req = la.Request(i)
        deadlines.add(req, 5.0, "t/w")
        req.reply(i)  # answered at once, as a fast callee would
    assert len(deadlines) <= 2 * 1024 + 1


async def test_requests_abandoned_by_their_callers_do_not_pile_up_in_the_callee(autojump_clock):
    held: list[la.Request] = []

    async def slow(ctx: la.ActorContext) -> None:
        async for req in ctx.mailbox:
            await trio.sleep(10)
            req.reply("late")
            held.append(req)
            if len(held) == 3:
                assert ctx.mailbox._inflight in (None, set())

    async with la.open_supervisor("t", [la.ChildSpec("s", slow)]) as sup:
        addr = sup.address("s")
        for i in range(3):
            with pytest.raises(la.CallTimeout):
                await addr.call(i, timeout=1)
        with sup.subscribe() as events:
            await trio.sleep(40)
            assert not [e for e in events.pending() if isinstance(e, la.Exited)]
    assert len(held) == 3 and all(r.abandoned for r in held)
