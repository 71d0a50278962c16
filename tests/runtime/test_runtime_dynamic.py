"""Dynamic children, the registry, get-or-start, and kill(path)."""

from __future__ import annotations

import pytest
import trio

import lambda_actors as la
from runtime_probes import Crash, Finish, Journal, spec


async def test_start_child_gives_a_usable_address_at_once(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t") as sup:
        addr = sup.start_child(spec("dyn", journal))
        addr.send_nowait("before it ran")
        assert await addr.call("x") == "x"
        assert journal.of("msg") == [("dyn", "before it ran"), ("dyn", "x")]


async def test_which_and_count_children_list_static_and_dynamic_children_in_order(autojump_clock):
    journal = Journal()
    children = [spec("a", journal), la.SupervisorSpec("sub", [spec("x", journal)])]
    async with la.open_supervisor("t", children) as sup:
        sup.start_child(spec("d1", journal))
        sup.start_child(spec("d2", journal))
        assert [c.name for c in sup.which_children()] == ["a", "sub", "d1", "d2"]
        assert [c.supervisor for c in sup.which_children()] == [False, True, False, False]
        assert sup.count_children() == la.ChildCounts(specs=4, active=4, supervisors=1, workers=3)
        await sup.terminate_child("d1")
        assert [c.name for c in sup.which_children()] == ["a", "sub", "d1", "d2"]
        assert sup.count_children().active == 3
        sup.delete_child("d1")
        assert [c.name for c in sup.which_children()] == ["a", "sub", "d2"]


async def test_a_duplicate_child_name_is_refused(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("a", journal)]) as sup:
        with pytest.raises(la.ChildSpecError, match="already exists"):
            sup.start_child(spec("a", journal))


def test_duplicate_names_in_a_spec_are_refused_when_it_is_written():
    journal = Journal()
    with pytest.raises(la.ChildSpecError, match="unique"):
        la.SupervisorSpec("s", [spec("a", journal), spec("a", journal)])


@pytest.mark.parametrize("name", ["", "a/b", 7])
def test_bad_child_names_are_refused(name):
    with pytest.raises(la.ChildSpecError, match="segment"):
        la.ChildSpec(name, lambda ctx: None)


def test_bad_policy_values_in_a_spec_are_refused():
    with pytest.raises(la.ChildSpecError, match="restart = 'sometimes'"):
        la.ChildSpec("a", lambda ctx: None, restart="sometimes")


async def test_terminated_dynamic_child_leaves_the_registry(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t") as sup:
        addr = sup.start_child(spec("d", journal))
        sup.registry.register(("room", "!r"), addr)
        assert sup.registry.lookup(("room", "!r")) is addr
        await sup.terminate_child("d")
        assert ("room", "!r") not in sup.registry
        assert "t/d" not in sup.registry
        with pytest.raises(la.NoSuchActor):
            sup.registry.lookup(("room", "!r"))
        with pytest.raises(la.ActorStopped):
            await addr.send("x")


async def test_get_or_start_starts_once_and_then_returns_the_same_address(autojump_clock):
    journal = Journal()
    made: list[str] = []

    def room_spec(room_id: str):
        def make() -> la.ChildSpec:
            made.append(room_id)
            return spec(room_id, journal, restart="transient")
        return make

    async with la.open_supervisor("node", [la.SupervisorSpec("rooms")]) as sup:
        rooms = sup.registry.supervisor("node/rooms")
        first = sup.registry.get_or_start(("room", "!a"), rooms, room_spec("!a"))
        again = sup.registry.get_or_start(("room", "!a"), rooms, room_spec("!a"))
        other = sup.registry.get_or_start(("room", "!b"), rooms, room_spec("!b"))
        assert first is again and first is not other
        assert made == ["!a", "!b"]
        assert rooms.count_children().specs == 2
        # A transient room actor that returned is stopped with its spec kept
        # (OTP): the next use starts it again, at the same address, and the
        # registry does not grow.
        with sup.subscribe() as events:
            await first.send(Finish())
            await events.wait_for(la.Exited, path="node/rooms/!a")
        assert first.stopped and ("room", "!a") not in sup.registry
        for round in range(3):
            again = sup.registry.get_or_start(("room", "!a"), rooms, room_spec("!a"))
            assert again is first and not again.stopped
            assert await again.call("hello") == "hello"
            await again.send(Finish())
            await trio.testing.wait_all_tasks_blocked()
        assert made == ["!a", "!b"]
        assert rooms.count_children().specs == 2
        assert sup.registry._keys_of[first] == [("room", "!a")]
        assert journal.count("start", "!a") == 4


async def test_registry_keys_cannot_be_taken_twice(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("a", journal), spec("b", journal)]) as sup:
        sup.registry.register("svc", sup.address("a"))
        with pytest.raises(ValueError, match="already registered"):
            sup.registry.register("svc", sup.address("b"))
        sup.registry.unregister("svc")
        sup.registry.register("svc", sup.address("b"))
        assert sup.registry.lookup("svc") is sup.address("b")
        assert set(sup.registry.keys()) == {"t/a", "t/b", "svc"}


async def test_two_trees_in_one_program_share_nothing(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("one", [spec("w", journal)]) as one:
        async with la.open_supervisor("one", [spec("w", journal)]) as two:
            assert one.registry is not two.registry
            assert one.address("w") is not two.address("w")
            assert one.registry.lookup("one/w") is one.address("w")
            assert two.registry.lookup("one/w") is two.address("w")


async def test_dynamic_children_are_gone_after_their_supervisor_restarts(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [la.SupervisorSpec("rooms", [], intensity=0)]) as sup:
        rooms = sup.child_supervisor("rooms")
        a = rooms.start_child(spec("a", journal))
        b = rooms.start_child(spec("b", journal))
        with sup.subscribe() as events:
            await a.send(Crash())  # intensity 0: rooms escalates and is restarted by t
            await events.wait_for(la.Restarted, path="t/rooms")
        assert a.stopped and b.stopped
        assert rooms.count_children().specs == 0
        c = rooms.start_child(spec("a", journal))
        assert await c.call("new") == "new"


async def test_kill_crashes_an_actor_anywhere_in_the_tree(autojump_clock):
    journal = Journal()
    tree = [la.SupervisorSpec("agents", [la.SupervisorSpec("agent-0", [spec("conn-17", journal)])])]
    async with la.open_supervisor("node", tree) as sup:
        with sup.subscribe() as events:
            assert sup.kill("node/agents/agent-0/conn-17", note="chaos")
            exited = await events.wait_for(la.Exited, path="node/agents/agent-0/conn-17")
            await events.wait_for(la.Restarted, path="node/agents/agent-0/conn-17")
        assert isinstance(exited.reason, la.ActorKilled) and "chaos" in str(exited.reason)
        inner = sup.registry.supervisor("node/agents")
        assert inner.kill("agent-0/conn-17")  # relative to that supervisor
        with pytest.raises(la.NoSuchActor):
            sup.kill("node/agents/agent-0/conn-17/deeper")


async def test_killing_a_supervisor_restarts_its_whole_subtree(autojump_clock):
    journal = Journal()
    tree = [la.SupervisorSpec("agents", [spec("x", journal), spec("y", journal)])]
    async with la.open_supervisor("node", tree) as sup:
        await trio.testing.wait_all_tasks_blocked()
        with sup.subscribe() as events:
            assert sup.kill("node/agents")
            await events.wait_for(la.Restarted, path="node/agents")
            await trio.testing.wait_all_tasks_blocked()
        assert journal.names("start") == ["x", "y", "x", "y"]
        assert await sup.registry.lookup("node/agents/y").call("ok") == "ok"


async def test_start_child_on_a_stopped_supervisor_raises_actor_stopped(autojump_clock):
    async with la.open_supervisor("t") as sup:
        pass
    with pytest.raises(la.ActorStopped):
        sup.start_child(spec("late", Journal()))


async def test_aclose_of_a_nested_supervisor_stops_it_and_restart_child_brings_it_back(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [la.SupervisorSpec("sub", [spec("x", journal)])]) as sup:
        sub = sup.child_supervisor("sub")
        x = sub.address("x")
        await sub.aclose()
        assert x.stopped
        assert sup.child_state("sub").status is la.Status.STOPPED
        assert sup.count_children().specs == 1
        assert journal.count("start", "x") == 1
        assert sup.restart_child("sub") is sub
        assert await x.call("back") == "back"
        assert journal.count("start", "x") == 2
        await sub.aclose()
        sup.delete_child("sub")
        assert sup.count_children().specs == 0
        with pytest.raises(la.NoSuchActor):
            sup.registry.supervisor("t/sub")
