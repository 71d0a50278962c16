"""The restart decision as a pure function: each rule, and agreement with the hypothesis model."""

from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings

import lambda_actors as la
from lambda_actors.runtime.decision import Action, History, decide, expired
from test_runtime_restart_model import Scenario, model, scenarios

FRESH = History(attempt=0, started_at=0.0, window=())
CRASH = RuntimeError("boom")


def test_a_temporary_child_is_removed_whatever_the_reason():
    for reason in (None, CRASH):
        assert decide(FRESH, la.Restart.TEMPORARY, la.Backoff(), la.Policy(), reason, 1.0).action is Action.REMOVE


def test_a_transient_child_that_returned_stays_stopped_and_one_that_crashed_restarts():
    assert decide(FRESH, la.Restart.TRANSIENT, la.Backoff(), la.Policy(), None, 1.0).action is Action.STOP
    assert decide(FRESH, la.Restart.TRANSIENT, la.Backoff(), la.Policy(), CRASH, 1.0).action is Action.RESTART


def test_a_permanent_child_restarts_even_after_a_normal_return():
    d = decide(FRESH, la.Restart.PERMANENT, la.Backoff(), la.Policy(), None, 1.0)
    assert (d.action, d.forget, d.record, d.attempt) == (Action.RESTART, 0, 1.0, 1)


def test_over_the_intensity_it_escalates_or_parks():
    full = History(attempt=3, started_at=9.0, window=(7.0, 8.0, 9.0))
    escalate = decide(full, la.Restart.PERMANENT, la.Backoff(), la.Policy(intensity=3, period=5), CRASH, 10.0)
    assert escalate.action is Action.ESCALATE
    park = decide(full, la.Restart.PERMANENT, la.Backoff(),
                  la.Policy(intensity=3, period=5, on_exhausted=la.OnExhausted.PARK, cool_down=60), CRASH, 10.0)
    assert (park.action, park.retry_at, park.delay, park.attempt) == (Action.PARK, 70.0, 60, 0)
    window = deque(full.window)
    park.update(window)
    assert not window  # a parked child comes back with a fresh budget


def test_a_positive_backoff_delays_and_grows_until_a_quiet_run_resets_it():
    backoff = la.Backoff(min=1, max=8, multiplier=2, reset_after=30)
    policy = la.Policy(intensity=100, period=1000)
    d1 = decide(History(0, 0.0, ()), la.Restart.PERMANENT, backoff, policy, CRASH, 1.0)
    window = deque[float]()
    d1.update(window)
    d2 = decide(History(d1.attempt, 2.0, window), la.Restart.PERMANENT, backoff, policy, CRASH, 3.0)
    d2.update(window)
    assert (d1.action, d1.delay, d1.retry_at) == (Action.BACK_OFF, 1, 2.0)
    assert (d2.attempt, d2.delay) == (2, 2)
    quiet = decide(History(d2.attempt, 5.0, window), la.Restart.PERMANENT, backoff, policy, CRASH, 35.0)
    assert (quiet.attempt, quiet.delay) == (1, 1)


def test_the_window_keeps_a_restart_exactly_one_period_old_as_otp():
    assert expired((0.0, 5.0), 10.0, 10.0) == 0
    assert expired((0.0, 5.0), 10.5, 10.0) == 1
    window = deque([0.0, 5.0])
    d = decide(History(2, 9.0, window), la.Restart.PERMANENT, la.Backoff(), la.Policy(intensity=2, period=10),
               CRASH, 10.0)
    assert d.action is Action.ESCALATE  # 0, 5 and 10 are all within the period


def drive(s: Scenario) -> list[tuple[bool, str, int, tuple[int, ...]]]:
    """The scenario's crashes through ``decide`` alone, bookkept as the supervisor does."""
    parent = la.Policy(intensity=s.intensity, period=s.period, cool_down=s.cool_down,
                       on_exhausted=la.OnExhausted("park" if s.park else "escalate"),
                       strategy=la.Strategy(s.strategy))
    n = s.children
    attempt, started_at = [0] * n, [0.0] * n
    windows = [deque[float]() for _ in range(n)]
    shared = deque[float]()
    restarts, starts = [0] * n, [1] * n
    parked_until: list[float | None] = [None] * n
    rng = random.Random(0)
    steps: list[tuple[bool, str, int, tuple[int, ...]]] = []
    for t, i in s.crashes:
        for k in range(n):
            until = parked_until[k]
            if until is not None and t >= until:
                parked_until[k], started_at[k] = None, until
                starts[k] += 1
        if parked_until[i] is not None:
            steps.append((False, "parked", restarts[i], tuple(starts)))
            continue
        history = History(attempt[i], started_at[i], windows[i] if s.park else shared)
        d = decide(history, la.Restart.PERMANENT, la.Backoff(), parent, CRASH, float(t), rng)
        d.update(windows[i] if s.park else shared)
        if d.action is Action.ESCALATE:
            steps.append((True, "escalated", restarts[i], ()))
            return steps
        if d.action is Action.PARK:
            assert d.retry_at is not None
            parked_until[i] = d.retry_at
            steps.append((True, "parked", restarts[i], tuple(starts)))
            continue
        assert d.action is Action.RESTART
        attempt[i] = d.attempt
        restarts[i] += 1
        group = {"one_for_one": [i], "one_for_all": range(n), "rest_for_one": range(i, n)}[s.strategy]
        for k in group:
            starts[k] += 1
            started_at[k] = float(t)
        steps.append((True, "running", restarts[i], tuple(starts)))
    return steps


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_decision_agrees_with_the_restart_model(s: Scenario) -> None:
    assert drive(s) == model(s)
