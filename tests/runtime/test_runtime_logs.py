"""Quiet, true logs: one line per failure with its reason; advice only where it applies."""

from __future__ import annotations

import pytest
import structlog
import trio
import trio.testing

import lambda_actors as la
from runtime_probes import Crash, Finish, Journal, spec


def failures(logs: list[dict]) -> list[tuple[str, str]]:
    return [(e["event"], e.get("actor", "")) for e in logs if e["log_level"] in ("warning", "error")]


async def test_a_crash_that_is_restarted_is_one_line_with_its_reason(autojump_clock):
    with structlog.testing.capture_logs() as logs:
        async with la.open_supervisor("t", [spec("w", Journal())]) as sup:
            await sup.address("w").send(Crash("kaput"))
            await trio.testing.wait_all_tasks_blocked()
    assert failures(logs) == [("actor crashed", "t/w")]
    assert "kaput" in logs[0]["reason"] and logs[0]["then"] == "restart"


async def test_a_crash_that_backs_off_is_one_line_with_the_delay(autojump_clock):
    with structlog.testing.capture_logs() as logs:
        async with la.open_supervisor("t", [spec("w", Journal(), backoff=la.Backoff(min=2, max=2))]) as sup:
            await sup.address("w").send(Crash("kaput"))
            await trio.testing.wait_all_tasks_blocked()
    assert failures(logs) == [("backing off", "t/w")]
    assert "kaput" in logs[0]["reason"] and logs[0]["delay"] == 2


async def test_an_escalation_parked_by_the_parent_is_two_lines_without_the_park_advice(autojump_clock):
    tree = [la.SupervisorSpec("agent", [spec("conn", Journal())], intensity=0)]
    with structlog.testing.capture_logs() as logs:
        async with la.open_supervisor("t", tree, on_exhausted="park", intensity=0, cool_down=60) as sup:
            with sup.subscribe() as events:
                sup.kill("t/agent/conn", "agent went away")
                await events.wait_for(la.Parked, path="t/agent")
    # The child's failure (which made its supervisor give up), then the
    # supervisor's own (parked by its parent): each once, with its own reason.
    assert failures(logs) == [("supervisor escalating", "t/agent"), ("actor parked", "t/agent")]
    escalating, parked = [e for e in logs if e["log_level"] != "info"]
    assert "agent went away" in escalating["reason"] and escalating["child"] == "conn"
    assert parked["reason"].startswith("gave up: more than 0 restarts")
    assert "agent went away" not in parked["reason"]
    assert not any("on_exhausted" in str(e) for e in logs)


async def test_the_advice_comes_with_an_escalation_nobody_handles(autojump_clock):
    with pytest.raises(la.IntensityExceeded) as info:
        async with la.open_supervisor("t", [spec("w", Journal())], intensity=0) as sup:
            sup.kill("t/w")
            await trio.sleep_forever()
    assert 'on_exhausted = "park"' in str(info.value) and "[t]" in str(info.value)


async def test_a_transient_child_that_returns_logs_no_failure(autojump_clock):
    with structlog.testing.capture_logs() as logs:
        async with la.open_supervisor("t", [spec("w", Journal(), restart="transient")]) as sup:
            await sup.address("w").send(Finish())
            await trio.testing.wait_all_tasks_blocked()
    assert failures(logs) == []
