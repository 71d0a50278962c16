"""A supervised worker pool embedded in an ordinary Trio program.

Run it with ``python examples/worker_pool.py``. Four workers square numbers;
some jobs are poisoned and crash the worker that takes them. The supervisor
restarts the worker (its address stays valid, queued jobs wait for it), the
caller's ``call`` fails at once with ``CallAborted`` instead of timing out,
and the program retries that job with the poison removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle

import trio

import lambda_actors as la


@dataclass(frozen=True)
class Square:
    n: int
    poisoned: bool = False


async def worker(ctx: la.ActorContext) -> None:
    async for request in ctx.mailbox:
        job = request.msg
        if job.poisoned:
            raise ValueError(f"poisoned job {job.n}")
        await trio.sleep(0.001)  # pretend to work
        request.reply(job.n * job.n)


async def main() -> None:
    pool = la.SupervisorSpec(
        "pool",
        [la.ChildSpec(f"worker-{i}", worker) for i in range(4)],
        strategy="one_for_one",
        intensity=20,
        period=1.0,
    )
    results: dict[int, int] = {}
    crashes = 0
    async with la.open_supervisor("app", [pool]) as sup:
        workers = cycle(sup.child_supervisor("pool").address(f"worker-{i}") for i in range(4))
        with sup.subscribe() as events:

            async def run_job(n: int, address: la.Address) -> None:
                nonlocal crashes
                try:
                    results[n] = await address.call(Square(n, poisoned=n % 7 == 0), timeout=5)
                except la.CallAborted:
                    crashes += 1
                    results[n] = await address.call(Square(n), timeout=5)

            async with trio.open_nursery() as nursery:
                for n in range(1, 31):
                    nursery.start_soon(run_job, n, next(workers))
            restarts = sum(isinstance(e, la.Restarted) for e in events.pending())
        stats = sup.child_supervisor("pool").statistics()

    assert results == {n: n * n for n in range(1, 31)}
    print(f"{len(results)} jobs done, {crashes} crashes survived, "
          f"{restarts} restarts, pool restarts={stats.restarts}")


if __name__ == "__main__":
    trio.run(main)
