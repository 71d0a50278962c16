"""Benchmark of the actor runtime against raw Trio, measured in the same run.

    python benchmarks/runtime.py           # a table
    python benchmarks/runtime.py --json    # one JSON object
    python benchmarks/runtime.py --triotp /path/to/py3.13-with-triotp/bin/python

Each figure is printed beside its raw-Trio baseline, so the ratios mean
something on any machine:

* send: one-way messages per second, ``Address.send`` vs a raw memory
  channel with the same buffer (and, for reference, a rendezvous channel);
* call: request/reply round trips per second, ``Address.call`` (with its
  default timeout, and without one) vs a raw channel pair;
* restart: crash -> the restarted actor handling its next message (backoff
  0), median and p99, vs the raw floor of a task that dies and is re-spawned;
* memory: bytes per idle actor among 10,000 under one supervisor (traced by
  tracemalloc) vs 10,000 raw tasks each waiting on its own channel, and the
  time to spawn the 10,000 (vs spawning the raw tasks).

Medians of several rounds are reported. This is a benchmark, not a test:
nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Awaitable, Callable

import structlog
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lambda_actors as la  # noqa: E402

SENDS = 100_000
CALLS = 50_000
RESTARTS = 2_000
IDLE = 10_000
CAPACITY = 1_000


class Boom(Exception):
    pass


def rounds(fn: Callable[[], Awaitable[float]], n: int) -> float:
    """Median of ``n`` fresh trio.run calls of ``fn``."""
    return statistics.median(trio.run(fn) for _ in range(n))


# --- send ------------------------------------------------------------------

async def raw_send(capacity: int) -> float:
    tx, rx = trio.open_memory_channel[int](capacity)
    done = trio.Event()

    async def consumer() -> None:
        count = 0
        async for _ in rx:
            count += 1
            if count == SENDS:
                done.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(SENDS):
            await tx.send(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return SENDS / elapsed


async def actor_send() -> float:
    done = trio.Event()

    async def consumer(ctx: la.ActorContext) -> None:
        count = 0
        async for _ in ctx.mailbox:
            count += 1
            if count == SENDS:
                done.set()

    spec = la.ChildSpec("sink", consumer, mailbox_capacity=CAPACITY, shutdown=0)
    async with la.open_supervisor("bench", [spec]) as sup:
        addr = sup.address("sink")
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(SENDS):
            await addr.send(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return SENDS / elapsed


# --- call ------------------------------------------------------------------

async def raw_call() -> float:
    requests_tx, requests_rx = trio.open_memory_channel[Any](0)
    replies_tx, replies_rx = trio.open_memory_channel[int](0)

    async def server() -> None:
        async for n, reply in requests_rx:
            await reply.send(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        start = time.perf_counter()
        for i in range(CALLS):
            await requests_tx.send((i, replies_tx))
            await replies_rx.receive()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return CALLS / elapsed


async def actor_call(timeout: float | None) -> float:
    async def server(ctx: la.ActorContext) -> None:
        async for request in ctx.mailbox:
            request.reply(request.msg)

    spec = la.ChildSpec("echo", server, mailbox_capacity=CAPACITY, shutdown=0)
    async with la.open_supervisor("bench", [spec]) as sup:
        addr = sup.address("echo")
        start = time.perf_counter()
        for i in range(CALLS):
            await addr.call(i, timeout=timeout)
        elapsed = time.perf_counter() - start
    return CALLS / elapsed


# --- restart ---------------------------------------------------------------

async def raw_respawn() -> list[float]:
    """A task that dies is noticed by its parent, which spawns a new one."""
    tx, rx = trio.open_memory_channel[Any](CAPACITY)
    handled = trio.Event()
    exited = trio.Event()
    stamps: list[float] = []

    async def child() -> None:
        try:
            async for msg in rx:
                if msg == "crash":
                    raise Boom
                stamps.append(time.perf_counter())
                handled.set()
        except Boom:
            pass
        finally:
            exited.set()

    samples: list[float] = []
    async with trio.open_nursery() as nursery:

        async def parent() -> None:
            nonlocal exited
            while True:
                exited = trio.Event()
                nursery.start_soon(child)
                await exited.wait()

        nursery.start_soon(parent)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(RESTARTS):
            stamps.clear()
            start = time.perf_counter()
            await tx.send("crash")
            await tx.send("next")
            while not stamps:
                await trio.lowlevel.checkpoint()
            samples.append(stamps[0] - start)
        nursery.cancel_scope.cancel()
    return samples


async def actor_restart() -> list[float]:
    stamps: list[float] = []

    async def fragile(ctx: la.ActorContext) -> None:
        async for msg in ctx.mailbox:
            if msg == "crash":
                raise Boom
            stamps.append(time.perf_counter())

    spec = la.ChildSpec("fragile", fragile, backoff=la.Backoff(min=0), shutdown=0)
    samples: list[float] = []
    async with la.open_supervisor("bench", [spec], intensity=RESTARTS * 2, period=3600) as sup:
        addr = sup.address("fragile")
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(RESTARTS):
            stamps.clear()
            start = time.perf_counter()
            await addr.send("crash")
            await addr.send("next")
            while not stamps:
                await trio.lowlevel.checkpoint()
            samples.append(stamps[0] - start)
    return samples


# --- memory and spawn --------------------------------------------------------

async def idle_actor(ctx: la.ActorContext) -> None:
    async for _ in ctx.mailbox:
        pass


async def raw_idle_tasks() -> float:
    async def idle(rx: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in rx:
            pass

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with trio.open_nursery() as nursery:
        channels = []
        for _ in range(IDLE):
            tx, rx = trio.open_memory_channel[Any](CAPACITY)
            channels.append(tx)
            nursery.start_soon(idle, rx)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return used / IDLE


async def actor_idle_memory() -> float:
    async with la.open_supervisor("bench", [la.SupervisorSpec("pool")]) as sup:
        pool = sup.child_supervisor("pool")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(IDLE):
            pool.start_child(la.ChildSpec(f"a{i}", idle_actor, mailbox_capacity=CAPACITY, shutdown=0))
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    return used / IDLE


async def raw_spawn_time() -> float:
    async def idle(rx: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in rx:
            pass

    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        for _ in range(IDLE):
            _, rx = trio.open_memory_channel[Any](CAPACITY)
            nursery.start_soon(idle, rx)
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed


async def actor_spawn_time() -> float:
    async with la.open_supervisor("bench", [la.SupervisorSpec("pool")]) as sup:
        pool = sup.child_supervisor("pool")
        start = time.perf_counter()
        for i in range(IDLE):
            pool.start_child(la.ChildSpec(f"a{i}", idle_actor, mailbox_capacity=CAPACITY, shutdown=0))
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - start
    return elapsed


# --- main --------------------------------------------------------------------

def paired(raw: Callable[[], Awaitable[float]], mine: Callable[[], Awaitable[float]], n: int) -> tuple[float, float]:
    """Medians of ``n`` alternating rounds, so a busy machine slows both sides alike."""
    raws, mines = [], []
    for _ in range(n):
        raws.append(trio.run(raw))
        mines.append(trio.run(mine))
    return statistics.median(raws), statistics.median(mines)


def measure(quick: bool) -> dict[str, Any]:
    n = 3 if quick else 7

    def us(samples: list[float], q: float) -> float:
        samples = sorted(samples)
        return samples[min(len(samples) - 1, int(q * len(samples)))] * 1e6

    raw_send_rate, send_rate = paired(lambda: raw_send(CAPACITY), actor_send, n)
    raw_rendezvous = rounds(lambda: raw_send(0), n)
    raw_call_rate, call_rate = paired(raw_call, lambda: actor_call(None), n)
    call_rate_inf = rounds(lambda: actor_call(float("inf")), n)
    raw_restart: list[float] = []
    restart: list[float] = []
    for _ in range(n):
        raw_restart += trio.run(raw_respawn)
        restart += trio.run(actor_restart)
    raw_bytes = trio.run(raw_idle_tasks)
    actor_bytes = trio.run(actor_idle_memory)
    raw_spawn, spawn = paired(raw_spawn_time, actor_spawn_time, n)

    return {
        "send_per_s": round(send_rate),
        "raw_send_per_s": round(raw_send_rate),
        "send_ratio": round(send_rate / raw_send_rate, 3),
        "raw_rendezvous_send_per_s": round(raw_rendezvous),
        "send_ratio_vs_rendezvous": round(send_rate / raw_rendezvous, 3),
        "call_per_s": round(call_rate),
        "call_no_timeout_per_s": round(call_rate_inf),
        "raw_call_per_s": round(raw_call_rate),
        "call_ratio": round(call_rate / raw_call_rate, 3),
        "call_no_timeout_ratio": round(call_rate_inf / raw_call_rate, 3),
        "restart_median_us": round(us(restart, 0.5), 1),
        "restart_p99_us": round(us(restart, 0.99), 1),
        "respawn_floor_us": round(us(raw_restart, 0.5), 1),
        "respawn_floor_p99_us": round(us(raw_restart, 0.99), 1),
        "restart_ratio": round(us(restart, 0.5) / us(raw_restart, 0.5), 3),
        "bytes_per_actor": round(actor_bytes),
        "raw_bytes_per_task": round(raw_bytes),
        "spawn_10k_s": round(spawn, 3),
        "raw_spawn_10k_s": round(raw_spawn, 3),
        "python": sys.version.split()[0],
        "trio": trio.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--triotp", metavar="PYTHON",
                        help="a Python >= 3.13 with triotp installed: also run the workloads on triotp")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    result = measure(args.quick)
    if args.triotp:
        side = Path(__file__).with_name("triotp_side.py")
        done = subprocess.run([args.triotp, str(side)], capture_output=True, text=True, check=True)
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        ("send (msgs/s)", result["send_per_s"], result["raw_send_per_s"], result["send_ratio"], ">= 0.85"),
        ("  vs rendezvous channel", result["send_per_s"], result["raw_rendezvous_send_per_s"],
         result["send_ratio_vs_rendezvous"], ""),
        ("call (round trips/s)", result["call_per_s"], result["raw_call_per_s"], result["call_ratio"], ">= 0.75"),
        ("  without a timeout", result["call_no_timeout_per_s"], result["raw_call_per_s"],
         result["call_no_timeout_ratio"], ""),
        ("restart median (us)", result["restart_median_us"], result["respawn_floor_us"],
         result["restart_ratio"], "<= 2"),
        ("restart p99 (us)", result["restart_p99_us"], result["respawn_floor_p99_us"], "", ""),
        ("bytes per idle actor", result["bytes_per_actor"], result["raw_bytes_per_task"],
         round(result["bytes_per_actor"] / result["raw_bytes_per_task"], 3), "<= 8 KB"),
        ("spawn 10k actors (s)", result["spawn_10k_s"], result["raw_spawn_10k_s"],
         round(result["spawn_10k_s"] / result["raw_spawn_10k_s"], 3), "< 1"),
    ]
    if "triotp_send_per_s" in result:
        rows += [
            ("triotp cast (msgs/s)", result["triotp_send_per_s"], result["triotp_raw_send_per_s"],
             result["triotp_send_ratio"], "(rendezvous baseline)"),
            ("triotp call (round trips/s)", result["triotp_call_per_s"], result["triotp_raw_call_per_s"],
             result["triotp_call_ratio"], ""),
            ("triotp restart median (us)", result["triotp_restart_median_us"], "", "", ""),
            ("triotp restart p99 (us)", result["triotp_restart_p99_us"], "", "", ""),
            ("triotp bytes per idle actor", result["triotp_bytes_per_actor"], "", "", ""),
        ]
    print(f"{'':28}{'runtime':>12}{'raw trio':>12}{'ratio':>8}  goal")
    for name, mine, raw, ratio, goal in rows:
        print(f"{name:28}{mine!s:>12}{raw!s:>12}{ratio!s:>8}  {goal}")


if __name__ == "__main__":
    main()
