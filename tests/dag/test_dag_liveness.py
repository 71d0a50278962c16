"""Who is alive, as an observer decides it: deaths at once, none false across a homeserver restart."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_actors.dag.liveness import NodeAlive, NodeDead, Observer


def observer() -> Observer:
    return Observer(me="me", grace_s=10.0, heartbeat_interval_s=30.0, missed=3)


def test_an_offline_outside_a_homeserver_outage_is_a_death_at_once() -> None:
    o = observer()
    assert o.status("a", "online", 0) == []
    assert o.status("a", "offline", 12) == [NodeDead("a", "offline (its delayed offline fired)")]
    assert o.live() == set()


def test_a_clean_stop_is_a_death_at_once_and_said_once() -> None:
    o = observer()
    o.status("a", "online", 0)
    assert o.status("a", "stopped", 1) == [NodeDead("a", "stopped cleanly")]
    assert o.status("a", "offline", 2) == []


def test_a_homeserver_restart_is_not_a_death_when_the_node_re_announces_within_grace() -> None:
    o = observer()
    o.status("a", "online", 0)
    o.status("b", "online", 0)
    assert o.sync_failed(5) == []
    assert o.sync_ok(20) == []  # the homeserver is back at 20
    # It fires the overdue delayed offlines as it starts.
    assert o.status("a", "offline", 20.5) == []
    assert o.status("b", "offline", 20.5) == []
    assert o.live() == {"a", "b"}  # suspects keep their tasks
    assert o.next_due() == 30
    assert o.status("a", "online", 24) == []
    assert o.heartbeat("b", 26) == []
    assert o.tick(100) == []
    assert o.spared == 2 and o.live() == {"a", "b"}


def test_a_node_that_died_during_the_outage_is_confirmed_grace_after_the_return() -> None:
    o = observer()
    o.status("a", "online", 0)
    o.sync_failed(5)
    o.sync_ok(20)
    o.status("a", "offline", 21)
    assert o.tick(29.9) == []
    assert o.tick(30) == [NodeDead("a", "offline, and not back 10 s after the homeserver returned")]


def test_an_offline_seen_while_the_observer_is_still_away_waits_for_its_return() -> None:
    o = observer()
    o.status("a", "online", 0)
    o.sync_failed(5)
    o.status("a", "offline", 6)
    assert o.next_due() is None
    assert o.tick(1000) == []
    o.sync_ok(1000)
    assert o.next_due() == 1010
    assert o.tick(1010) == [NodeDead("a", "offline, and not back 10 s after the homeserver returned")]


def test_long_after_the_return_an_offline_is_a_death_at_once_again() -> None:
    o = observer()
    o.status("a", "online", 0)
    o.sync_failed(5)
    o.sync_ok(20)
    assert o.status("a", "offline", 31) == [NodeDead("a", "offline (its delayed offline fired)")]


def test_three_missed_heartbeats_are_a_death_where_delayed_events_are_off() -> None:
    o = observer()
    o.heartbeat("a", 0)
    assert o.next_due() == 90
    assert o.tick(60) == []
    o.heartbeat("a", 60)
    assert o.next_due() == 150
    assert o.tick(149.9) == []
    assert o.tick(150) == [NodeDead("a", "3 heartbeats missed")]


def test_heartbeats_lost_while_the_homeserver_was_away_are_not_counted() -> None:
    o = observer()
    o.heartbeat("a", 0)
    o.sync_failed(10)
    assert o.tick(95) == []  # the observer cannot tell while it is away itself
    o.sync_ok(100)
    assert o.next_due() == 140  # the node's next beat comes within an interval of the return
    assert o.heartbeat("a", 120) == []
    assert o.next_due() == 210


def test_a_dead_node_that_comes_back_is_alive_again() -> None:
    o = observer()
    o.status("a", "online", 0)
    o.status("a", "offline", 12)
    assert o.heartbeat("a", 30) == [NodeAlive("a")]
    assert o.live() == {"a"}


def test_the_observer_never_declares_itself_dead_and_ignores_unknown_statuses() -> None:
    o = observer()
    o.status("me", "online", 0)
    assert o.status("me", "offline", 1) == []
    o.status("a", "online", 0)
    assert o.status("a", "sleeping", 1) == []
    assert o.live() == {"a"}


def test_a_node_never_seen_alive_is_not_announced_dead() -> None:
    o = observer()
    assert o.status("a", "offline", 0) == []
    assert o.live() == set()
    assert o.status("a", "online", 1) == [NodeAlive("a")]


# -- the model: homeserver outages and deaths at random ------------------------------------------

NODES = ("a", "b", "c", "d")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[float, str, str]], set[str]]:
    """Events as an observer sees them, and the nodes that really died.

    Outages of the homeserver, apart from each other; nodes that die (at a
    time outside or inside an outage) or live. A live node's overdue
    delayed offline may fire when the homeserver starts again; it then
    re-announces within 9.5 s. A dead node's offline fires 10 s after its
    death, or when the homeserver is back if it was away then."""
    events: list[tuple[float, str, str]] = [(0.0, "online", n) for n in NODES]
    t = 20.0
    outages: list[tuple[float, float]] = []
    for _ in range(draw(st.integers(0, 3))):
        start = t + draw(st.floats(1, 60))
        length = draw(st.floats(0.5, 120))
        outages.append((start, start + length))
        t = start + length
    deaths = {n: draw(st.none() | st.floats(5, t + 60)) for n in NODES}
    for start, back in outages:
        events.append((start, "sync_failed", ""))
        events.append((back, "sync_ok", ""))
        for n in NODES:
            death = deaths[n]
            if death is not None and death < start:
                continue
            if draw(st.booleans()):  # its delayed offline was overdue and fires on the restart
                events.append((back + 0.5, "offline", n))
            if death is None or death > back + 10:
                events.append((back + draw(st.floats(0.6, 9.5)), "online", n))
    for n, death in deaths.items():
        if death is None:
            continue
        fire = death + 10
        for start, back in outages:
            if start <= fire <= back:
                fire = back + 0.5
        events.append((fire, "offline", n))
    events.sort(key=lambda e: (e[0], e[1] != "sync_ok"))  # the sync resumes before it delivers
    dead = {n for n, d in deaths.items() if d is not None}
    return events, dead


@settings(max_examples=200, deadline=None)
@given(history=histories())
def test_model_a_homeserver_outage_kills_nobody_and_every_death_is_found_once(
    history: tuple[list[tuple[float, str, str]], set[str]],
) -> None:
    events, dead = history
    o = Observer(grace_s=10.0, heartbeat_interval_s=1e9)
    said: list[NodeDead] = []
    for at, kind, node in events:
        said += [a for a in o.tick(at) if isinstance(a, NodeDead)]
        if kind == "sync_failed":
            o.sync_failed(at)
        elif kind == "sync_ok":
            said += [a for a in o.sync_ok(at) if isinstance(a, NodeDead)]
        else:
            said += [a for a in o.status(node, kind, at) if isinstance(a, NodeDead)]
    said += [a for a in o.tick(events[-1][0] + 1000) if isinstance(a, NodeDead)]
    declared = [d.node_id for d in said]
    assert len(declared) == len(set(declared)), f"a death said twice: {declared}"
    assert set(declared) == dead, f"declared {declared}, died {dead}"
