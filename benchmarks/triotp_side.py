"""The same workloads on triotp, for comparison; run by benchmarks/runtime.py --triotp PYTHON.

triotp needs Python >= 3.13, so this script runs in a side virtualenv and
prints one JSON object. It measures its own raw-trio baselines in the same
process so its ratios are comparable with ours. Only triotp's public API is
used (gen_server, supervisor, mailbox).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import tracemalloc
import types
from typing import Any

import trio
import trio.testing
from triotp import gen_server, mailbox, supervisor

SENDS = 100_000
CALLS = 50_000
RESTARTS = 2_000
IDLE = 10_000


class Boom(Exception):
    pass


def server_module(on_cast: Any) -> types.ModuleType:
    # triotp's gen_server takes a module whose callbacks are its attributes;
    # they are set below, so the type checker sees the module as Any.
    module: Any = types.ModuleType("bench_server")

    async def init(_arg: Any) -> None:
        return None

    async def handle_call(message: Any, _caller: Any, state: Any) -> Any:
        return gen_server.Reply(payload=message), state

    async def handle_cast(message: Any, state: Any) -> Any:
        on_cast(message)
        return gen_server.NoReply(), state

    async def terminate(reason: Any, state: Any) -> None:
        return None

    module.init = init
    module.handle_call = handle_call
    module.handle_cast = handle_cast
    module.terminate = terminate
    return module


async def raw_send() -> float:
    tx, rx = trio.open_memory_channel[int](0)
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
        return SENDS / (time.perf_counter() - start)


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


async def triotp_cast() -> float:
    mailbox._init()
    count = 0
    done = trio.Event()

    def on_cast(_msg: Any) -> None:
        nonlocal count
        count += 1
        if count == SENDS:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, server_module(on_cast), None, "sink")
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(SENDS):
            await gen_server.cast("sink", i)
        await done.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return SENDS / elapsed


async def triotp_call() -> float:
    mailbox._init()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, server_module(lambda m: None), None, "echo")
        await trio.testing.wait_all_tasks_blocked()
        start = time.perf_counter()
        for i in range(CALLS):
            await gen_server.call("echo", i)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return CALLS / elapsed


async def triotp_restart() -> list[float]:
    mailbox._init()
    stamps: list[float] = []

    async def fragile() -> None:
        async with mailbox.open("fragile") as mid:
            while True:
                msg = await mailbox.receive(mid)
                if msg == "crash":
                    raise Boom
                stamps.append(time.perf_counter())

    spec = supervisor.child_spec(id="fragile", task=fragile, args=[])
    opts = supervisor.options(max_restarts=RESTARTS * 2, max_seconds=3600)
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.start, [spec], opts)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(RESTARTS):
            stamps.clear()
            start = time.perf_counter()
            await mailbox.send("fragile", "crash")
            while True:
                # triotp's mailbox is new after a restart: until it exists a
                # send fails (with its own error or a raw trio one), so retry.
                try:
                    await mailbox.send("fragile", "next")
                    break
                except (mailbox.MailboxDoesNotExist, trio.ClosedResourceError, trio.BrokenResourceError):
                    await trio.lowlevel.checkpoint()
            while not stamps:
                await trio.lowlevel.checkpoint()
            samples.append(stamps[0] - start)
        nursery.cancel_scope.cancel()
    return samples


async def triotp_idle_memory() -> tuple[float, float]:
    mailbox._init()
    module = server_module(lambda m: None)
    async with trio.open_nursery() as nursery:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        for i in range(IDLE):
            nursery.start_soon(gen_server.start, module, None, f"g{i}")
        await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - start
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return used / IDLE, elapsed


def main() -> None:
    n = 3
    raw_send_rate = statistics.median(trio.run(raw_send) for _ in range(n))
    raw_call_rate = statistics.median(trio.run(raw_call) for _ in range(n))
    cast = statistics.median(trio.run(triotp_cast) for _ in range(n))
    call = statistics.median(trio.run(triotp_call) for _ in range(n))
    restarts = sorted(s for _ in range(n) for s in trio.run(triotp_restart))
    per_actor, spawn_traced = trio.run(triotp_idle_memory)
    print(json.dumps({
        "triotp_send_per_s": round(cast),
        "triotp_raw_send_per_s": round(raw_send_rate),
        "triotp_send_ratio": round(cast / raw_send_rate, 3),
        "triotp_call_per_s": round(call),
        "triotp_raw_call_per_s": round(raw_call_rate),
        "triotp_call_ratio": round(call / raw_call_rate, 3),
        "triotp_restart_median_us": round(restarts[len(restarts) // 2] * 1e6, 1),
        "triotp_restart_p99_us": round(restarts[int(0.99 * len(restarts))] * 1e6, 1),
        "triotp_bytes_per_actor": round(per_actor),
    }))


if __name__ == "__main__":
    main()
