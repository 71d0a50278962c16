"""Node heartbeats (SPEC 8.2): contents, the node's liveness machine, the observers' rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lambda_actors.dag import heartbeat as h
from lambda_actors.dag.heartbeat import (
    CancelDelayed,
    ListDelayed,
    Liveness,
    ReadVersions,
    RestartDelayed,
    ScheduleOffline,
    SendHeartbeat,
    WriteStatus,
)
from lambda_actors.dag.status import Progress

AT = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
OFFERED = {"versions": ["v1.11"], "unstable_features": {"org.matrix.msc4140": True}}
NOT_OFFERED = {"versions": ["v1.11"], "unstable_features": {"org.matrix.msc4140": False}}


# -- contents ------------------------------------------------------------------------------


def test_heartbeat_and_active_runs_and_status_contents_follow_8_2() -> None:
    beat = h.heartbeat_content(
        "node-a", "did:key:z6", "online", agents=["agent-0"], max_workers=4, version="0.1",
        cpu_percent=12, memory_percent=40, active_sessions=2, at=AT,
    )
    assert beat == {
        "node_id": "node-a",
        "did": "did:key:z6",
        "status": "online",
        "capabilities": {"agents": ["agent-0"], "max_workers": 4, "version": "0.1"},
        "resources": {"cpu_percent": 12, "memory_percent": 40, "active_sessions": 2},
        "timestamp": "2026-12-02T10:30:00.000Z",
    }
    active = h.dag_active_content("node-a", [h.ActiveRun("run-1", "refactor", Progress(2, 6), "running")], at=AT)
    assert active["active_runs"] == [
        {"run_id": "run-1", "dag_name": "refactor", "progress": {"completed": 2, "total": 6, "failed": 0}, "status": "running"}
    ]
    assert h.node_status_content("node-a", "online", since=AT) == {
        "node_id": "node-a", "status": "online", "since": "2026-12-02T10:30:00.000Z"
    }


def test_a_float_percentage_is_refused() -> None:
    with pytest.raises(TypeError, match="cpu_percent"):
        h.heartbeat_content(
            "n", None, "online", agents=[], max_workers=1, version="v",
            cpu_percent=12.5, memory_percent=1, active_sessions=0, at=AT,  # type: ignore[arg-type]  # the point of the test
        )


def test_delayed_events_are_detected_from_versions() -> None:
    assert h.delayed_events_offered(OFFERED)
    assert not h.delayed_events_offered(NOT_OFFERED)
    assert not h.delayed_events_offered({"versions": ["v1.11"]})
    assert not h.delayed_events_offered({"unstable_features": "junk"})


def test_stale_delayed_picks_only_this_nodes_status_in_this_room() -> None:
    listed = [
        {"delay_id": "a", "room_id": "!hb", "type": h.NODE_STATUS, "state_key": "node-a"},
        {"delay_id": "b", "room_id": "!hb", "type": h.NODE_STATUS, "state_key": "node-b"},
        {"delay_id": "c", "room_id": "!other", "type": h.NODE_STATUS, "state_key": "node-a"},
        {"delay_id": "d", "room_id": "!hb", "type": "m.room.message"},
    ]
    assert h.stale_delayed(listed, "!hb", "node-a") == ["a"]


# -- the node's machine ---------------------------------------------------------------------


def live(machine: Liveness, stale: list[str] | None = None) -> None:
    assert machine.start(0.0) == [ReadVersions()]
    assert machine.versions(OFFERED, 0.1) == [ListDelayed()]
    assert machine.listed(stale or [], 0.2) == [*(CancelDelayed(d) for d in stale or []), ScheduleOffline(10_000)]
    assert machine.scheduled("d1", 0.3) == [WriteStatus("online")]
    assert machine.written(0.4) == [SendHeartbeat()]
    assert machine.phase == "live"


def test_the_delayed_offline_is_scheduled_before_online_is_announced_and_stale_ones_cancelled() -> None:
    machine = Liveness()
    live(machine, stale=["old-1", "old-2"])
    assert machine.delay_id == "d1"


def test_the_delayed_offline_is_restarted_every_5_s() -> None:
    machine = Liveness()
    live(machine)
    assert machine.next_due() == pytest.approx(5.3)
    assert machine.tick(5.2) == []
    assert machine.tick(5.3) == [RestartDelayed("d1")]
    assert machine.next_due() == pytest.approx(30.4)  # only the heartbeat while the restart runs
    assert machine.restarted(True, 5.35) == []
    assert machine.tick(10.35) == [RestartDelayed("d1")]


def test_a_restart_answered_not_found_re_registers_and_announces_online_again() -> None:
    machine = Liveness()
    live(machine)
    machine.tick(5.3)
    assert machine.restarted(False, 5.4) == [ListDelayed()]
    assert machine.listed([], 5.5) == [ScheduleOffline(10_000)]
    assert machine.scheduled("d2", 5.6) == [WriteStatus("online")]
    assert machine.written(5.7) == []
    assert machine.delay_id == "d2" and machine.reregistered == 1
    assert machine.tick(10.6) == [RestartDelayed("d2")]


def test_heartbeats_go_every_interval_and_missed_ones_are_not_made_up() -> None:
    machine = Liveness(heartbeat_every_s=30.0)
    live(machine)
    actions = []
    t = 0.4
    while t < 100:
        t += 5
        actions += machine.tick(t)
        for action in list(actions):
            if isinstance(action, RestartDelayed):
                actions.remove(action)
                machine.restarted(True, t)
    assert actions.count(SendHeartbeat()) == 3  # at 30.4, 60.4, 90.4
    assert machine.tick(500.0).count(SendHeartbeat()) == 1


def test_a_failed_request_is_asked_again_and_a_failed_schedule_starts_from_the_listing() -> None:
    machine = Liveness(retry_s=2.0)
    machine.start(0.0)
    assert machine.failed(0.1) == []
    assert machine.next_due() == pytest.approx(2.1)
    assert machine.tick(2.1) == [ReadVersions()]
    machine.versions(OFFERED, 2.2)
    machine.listed([], 2.3)
    # The schedule's answer was lost: it may have gone through, so list again.
    machine.failed(2.4)
    assert machine.tick(4.4) == [ListDelayed()]
    assert machine.listed(["ghost"], 4.5) == [CancelDelayed("ghost"), ScheduleOffline(10_000)]


def test_a_failed_restart_is_retried_and_keeps_the_same_delayed_event() -> None:
    machine = Liveness(retry_s=1.0)
    live(machine)
    machine.tick(5.3)
    machine.failed(5.4)
    assert machine.tick(6.4) == [RestartDelayed("d1")]


def test_a_refusal_that_lasts_is_asked_again_less_and_less_often_and_an_answer_resets_the_pace() -> None:
    # Without delayed events, "online" is the first write; a room whose power
    # levels refuse it keeps refusing.
    machine = Liveness(retry_s=1.0, retry_max_s=8.0)
    machine.start(0.0)
    machine.versions({}, 0.0)
    t, pauses = 0.0, []
    for _ in range(6):
        machine.failed(t)
        due = machine.next_due()
        assert due is not None
        pauses.append(due - t)
        t = due
        assert machine.tick(t) == [WriteStatus("online")]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    machine.written(t)
    assert machine.failures == 0


def test_a_clean_stop_cancels_the_delayed_offline_then_writes_stopped() -> None:
    machine = Liveness()
    live(machine)
    machine.tick(5.3)  # a restart in flight
    assert machine.stop(6.0) == [CancelDelayed("d1"), WriteStatus("stopped")]
    assert machine.restarted(True, 6.1) == []  # the late answer changes nothing
    assert machine.written(6.2) == []
    assert machine.phase == "stopped" and machine.next_due() is None
    assert machine.stop(7.0) == []


def test_a_delayed_offline_scheduled_while_stopping_is_cancelled_at_once() -> None:
    machine = Liveness()
    machine.start(0.0)
    machine.versions(OFFERED, 0.1)
    machine.listed([], 0.2)
    assert machine.stop(0.25) == [WriteStatus("stopped")]
    assert machine.scheduled("late", 0.3) == [CancelDelayed("late")]


def test_without_delayed_events_online_is_written_and_heartbeats_carry_liveness() -> None:
    machine = Liveness()
    machine.start(0.0)
    assert machine.versions(NOT_OFFERED, 0.1) == [WriteStatus("online")]
    assert machine.written(0.2) == [SendHeartbeat()]
    assert machine.next_due() == pytest.approx(30.2)
    assert machine.tick(30.2) == [SendHeartbeat()]
    assert machine.stop(31.0) == [WriteStatus("stopped")]


def test_a_restart_period_not_shorter_than_the_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than the delay"):
        Liveness(delay_ms=5_000, restart_every_s=5.0)


# -- the observers' rule -----------------------------------------------------------------------


def beat(node: str, ts: int) -> tuple[str, dict, int, None]:
    return (h.HEARTBEAT, {"node_id": node, "status": "online", "capabilities": {"agents": ["a0"]},
                          "resources": {"active_sessions": 1}}, ts, None)


def state(node: str, status: str, ts: int) -> tuple[str, dict, int, str]:
    return (h.NODE_STATUS, {"node_id": node, "status": status}, ts, node)


def test_three_missed_heartbeats_mean_offline_whatever_the_state_says() -> None:
    events = [state("a", "online", 0), beat("a", 1_000)]
    assert h.node_table(events, 1_000 + 90_000)["a"].liveness == "online"
    row = h.node_table(events, 1_000 + 90_001)["a"]
    assert row.liveness == "offline" and "missed" in row.reason
    assert row.agents == ("a0",) and row.active_sessions == 1


def test_the_homeservers_delayed_offline_and_a_clean_stop_count_when_newer_than_the_last_heartbeat() -> None:
    assert h.node_table([state("a", "online", 0), beat("a", 1_000), state("a", "offline", 11_000)], 12_000)["a"].liveness == "offline"
    assert h.node_table([beat("a", 1_000), state("a", "stopped", 2_000)], 3_000)["a"].liveness == "stopped"
    # Back after the homeserver fired its offline (it had restarted): heartbeats again.
    back = [beat("a", 1_000), state("a", "offline", 11_000), beat("a", 12_000)]
    assert h.node_table(back, 13_000)["a"].liveness == "online"


def test_a_node_known_only_from_its_status_state_shows_that_state_and_junk_is_ignored() -> None:
    table = h.node_table(
        [state("b", "online", 5), (h.HEARTBEAT, {"node_id": 3}, 6, None), (h.NODE_STATUS, {"status": "weird"}, 7, "c")],
        10,
    )
    assert list(table) == ["b"] and table["b"].liveness == "online"
