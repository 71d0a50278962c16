"""Random crash schedules against a model of OTP restart accounting (hypothesis).

The model is a few lines of plain Python: a sliding window of restart times
per supervisor (escalate, for every strategy: a group restart counts once) or
per child (park), OTP's rule for forgetting old restarts, and the cool-down of
a parked child. The runtime, driven on a
MockClock by ``kill`` at the scheduled times, must agree with it step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import lambda_actors as la
from runtime_probes import Journal, spec


@dataclass(frozen=True)
class Scenario:
    children: int
    intensity: int
    period: int
    park: bool
    strategy: str
    cool_down: float
    crashes: tuple[tuple[int, int], ...]  # (time, child index), times strictly increasing


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    children = draw(st.integers(1, 3))
    times = sorted(draw(st.sets(st.integers(1, 60), min_size=1, max_size=25)))
    crashes = tuple((t, draw(st.integers(0, children - 1))) for t in times)
    park = draw(st.booleans())
    # park needs one_for_one; escalate accounting is the same for every strategy.
    strategies = ["one_for_one"] if park else ["one_for_one", "one_for_all", "rest_for_one"]
    return Scenario(
        children=children,
        intensity=draw(st.integers(0, 4)),
        period=draw(st.integers(1, 15)),
        park=park,
        strategy=draw(st.sampled_from(strategies)),
        # Half seconds never coincide with a crash time, so there are no ties to break.
        cool_down=draw(st.integers(0, 20)) + 0.5,
        crashes=crashes,
    )


def model(s: Scenario) -> list[tuple[bool, str, int, tuple[int, ...]]]:
    """For each crash: (was it running, its status after, its restarts, starts of every child)."""
    n = s.children
    restarts = [0] * n
    starts = [1] * n
    windows: list[list[int]] = [[] for _ in range(n)]
    shared: list[int] = []
    parked_until: list[float | None] = [None] * n
    steps: list[tuple[bool, str, int, tuple[int, ...]]] = []
    for t, i in s.crashes:
        for k in range(n):
            until = parked_until[k]
            if until is not None and t >= until:
                parked_until[k] = None
                windows[k] = []
                starts[k] += 1
        if parked_until[i] is not None:
            steps.append((False, "parked", restarts[i], tuple(starts)))
            continue
        window = windows[i] if s.park else shared
        window[:] = [x for x in window if x >= t - s.period] + [t]  # OTP keeps one exactly period old
        if len(window) > s.intensity:
            if not s.park:
                steps.append((True, "escalated", restarts[i], ()))
                return steps
            parked_until[i] = t + s.cool_down
            steps.append((True, "parked", restarts[i], tuple(starts)))
            continue
        restarts[i] += 1
        group = {"one_for_one": [i], "one_for_all": range(n), "rest_for_one": range(i, n)}[s.strategy]
        for k in group:
            starts[k] += 1
        steps.append((True, "running", restarts[i], tuple(starts)))
    return steps


async def run(s: Scenario) -> list[tuple[bool, str, int, tuple[int, ...]]]:
    journal = Journal()
    steps: list[tuple[bool, str, int, tuple[int, ...]]] = []
    children = [spec(f"c{i}", journal) for i in range(s.children)]
    policy = dict(intensity=s.intensity, period=s.period, cool_down=s.cool_down,
                  on_exhausted="park" if s.park else "escalate", strategy=s.strategy)
    try:
        async with la.open_supervisor("t", children, **policy) as sup:
            for t, i in s.crashes:
                await trio.sleep_until(t)
                was_running = sup.kill(f"t/c{i}")
                await trio.testing.wait_all_tasks_blocked()
                state = sup.child_state(f"c{i}")
                starts = tuple(journal.count("start", f"c{k}") for k in range(s.children))
                steps.append((was_running, str(state.status), state.restarts, starts))
    except la.IntensityExceeded as exc:
        index = [t for t, _ in s.crashes].index(int(trio.current_time()))
        steps.append((True, "escalated", restarts_before_escalation(s, index, exc), ()))
    return steps


def restarts_before_escalation(s: Scenario, index: int, exc: la.IntensityExceeded) -> int:
    # The tree is gone; what the error says must match the crash that tipped it over.
    t, i = s.crashes[index]
    assert exc.child == f"c{i}"
    return sum(1 for _, j in s.crashes[:index] if j == i)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_restart_accounting_matches_the_model(s: Scenario) -> None:
    observed = trio.run(run, s, clock=trio.testing.MockClock(autojump_threshold=0))
    assert observed == model(s)
