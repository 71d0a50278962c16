"""Who is alive, as an observer decides it: deaths at once, none false across a homeserver restart."""

from __future__ import annotations

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
