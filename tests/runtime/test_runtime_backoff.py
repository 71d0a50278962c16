"""Backoff schedules: pure delays, and the delays a supervisor really waits."""

from __future__ import annotations

import random

import pytest
import trio

import lambda_actors as la
from runtime_probes import Journal, spec


def test_delays_grow_by_the_multiplier_and_stop_at_the_cap():
    backoff = la.Backoff(min=0.5, max=5, multiplier=2)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


def test_min_zero_means_restart_at_once():
    assert la.Backoff(min=0, max=10).delay(5) == 0


def test_jitter_stays_within_its_fraction_and_varies():
    backoff = la.Backoff(min=10, max=10, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(1, rng) for _ in range(200)]
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 100


def test_huge_attempt_numbers_do_not_overflow():
    assert la.Backoff(min=1, max=60, multiplier=10).delay(10_000) == 60


@pytest.mark.parametrize(
    ("backoff", "key"),
    [
        (la.Backoff(min=5, max=1), "min"),
        (la.Backoff(multiplier=0.5), "multiplier"),
        (la.Backoff(jitter=1.5), "jitter"),
        (la.Backoff(min=-1), "min"),
    ],
)
def test_impossible_backoffs_are_reported(backoff, key):
    assert key in [k for k, _ in backoff.problems()]


async def test_a_crashing_child_waits_the_schedule_between_restarts(autojump_clock):
    journal = Journal()
    backoff = la.Backoff(min=1, max=4, multiplier=2, reset_after=1000)
    async with la.open_supervisor("t", [spec("w", journal, backoff=backoff)], intensity=100, period=1000) as sup:
        with sup.subscribe() as events:
            delays = []
            for _ in range(5):
                assert sup.kill("t/w")
                delays.append((await events.wait_for(la.BackingOff, path="t/w")).delay)
                await events.wait_for(la.Restarted, path="t/w")
        assert delays == [1, 2, 4, 4, 4]
        assert trio.current_time() == pytest.approx(15)
        assert sup.child_state("w").attempt == 5


async def test_a_quiet_period_resets_the_backoff(autojump_clock):
    journal = Journal()
    backoff = la.Backoff(min=1, max=30, multiplier=3, reset_after=60)
    async with la.open_supervisor("t", [spec("w", journal, backoff=backoff)], intensity=100, period=1000) as sup:
        with sup.subscribe() as events:
            assert sup.kill("t/w")
            assert (await events.wait_for(la.BackingOff)).delay == 1
            await events.wait_for(la.Restarted)
            assert sup.kill("t/w")
            assert (await events.wait_for(la.BackingOff)).delay == 3
            await events.wait_for(la.Restarted)
            await trio.sleep(60)  # healthy for a full reset_after
            assert sup.kill("t/w")
            assert (await events.wait_for(la.BackingOff)).delay == 1


async def test_child_state_shows_backing_off_with_its_retry_time(autojump_clock):
    journal = Journal()
    async with la.open_supervisor("t", [spec("w", journal, backoff=la.Backoff(min=8, max=8))]) as sup:
        await trio.sleep(2)
        with sup.subscribe() as events:
            assert sup.kill("t/w")
            await events.wait_for(la.BackingOff)
        state = sup.child_state("w")
        assert (state.status, state.retry_at, state.retry_in) == (la.Status.BACKING_OFF, 10, 8)
        assert sup.address("w").state == state
        stats = sup.statistics()
        assert (stats.running, stats.backing_off, stats.restarts) == (0, 1, 1)


async def test_jitter_uses_the_trees_random_source(autojump_clock):
    async def delays_with(seed: int) -> list[float]:
        journal = Journal()
        backoff = la.Backoff(min=1, max=100, jitter=0.5)
        out = []
        async with la.open_supervisor("t", [spec("w", journal, backoff=backoff)], intensity=100,
                                      period=1000, rng=random.Random(seed)) as sup:
            with sup.subscribe() as events:
                for _ in range(3):
                    sup.kill("t/w")
                    out.append((await events.wait_for(la.BackingOff)).delay)
                    await events.wait_for(la.Restarted)
        return out

    assert await delays_with(1) == await delays_with(1)
    assert await delays_with(1) != await delays_with(2)
