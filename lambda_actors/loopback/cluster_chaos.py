"""``lambda-actors chaos --nodes N``: several nodes, killed while they work (issue 15, docs/chaos.md "Several nodes").

On one loopback Synapse, N node processes (``loopback/cluster.py``: each its
own account, node.toml, port and database) share fake agents that answer
after 1 to 4 s. A stream of DAG runs (a root task, a fan-out of tasks that
read its output, a join) is submitted to live nodes through their API
while, on a schedule drawn from ``random.Random(seed)``:

- nodes are SIGKILLed (``--node-kills``, at least 20 by default; a node
  holding tasks is preferred, one node down at a time) and started again
  after ``--down-min``..``--down-max`` seconds: long enough for the
  homeserver's delayed ``offline`` (10 s) to fire, so the dead node's tasks
  are taken over by the others rather than resumed by its next process;
- the homeserver is restarted once (``--homeserver-restarts``), with no kill
  for ``QUIET_BEFORE_S`` before and ``QUIET_AFTER_S`` after it, so a
  reassignment around it can only be a false takeover.

Then it drains (every run ends, or ``--drain`` seconds pass), stops the nodes and
folds the cluster room with :func:`~.cluster_report.cluster_report`. The exit
status is 0 when the issue's goals hold (``takeover_p99_s`` <= 15,
``tasks_lost`` == 0 with every run ended, ``tasks_completed_twice`` == 0,
``false_takeovers`` == 0), 1 when one does not (or the run failed), 2 for
bad options.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..bot.logs import SecretMask
from .cluster import ClusterError, ClusterOptions, ClusterStack, Mode, open_cluster
from ..dag.status import FINAL_TASK_STATUSES
from .cluster_report import KILL_WINDOW_S, RUN_ENDS, ClusterReport, TimelineEvent
from .homeserver import Homeserver

__all__ = ["ClusterChaosOptions", "add_arguments", "dag_file", "run", "run_cluster_chaos"]

#: No node is killed this long before a homeserver restart, nor after it:
#: a reassignment then is away from a node that is alive (a false takeover),
#: never one justified by a recent kill (the report's window).
QUIET_BEFORE_S = KILL_WINDOW_S + 5.0
#: The homeserver's return, the grace for nodes to re-announce (10 s), a margin.
QUIET_AFTER_S = 30.0
#: The longest a whole run may take once submitted, calm (then it counts as not ended).
RUN_TIMEOUT = "3m"


@dataclass(frozen=True)
class ClusterChaosOptions:
    """Size, schedule and seed of a run of several nodes (the defaults are the documented run)."""

    nodes: int = 3
    mode: Mode = "matrix"
    runs: int = 40
    fan_out: int = 4  #: tasks between a run's root and its join
    node_kills: int = 20
    down_min: float = 12.0  #: seconds a killed node stays down, at least ...
    down_max: float = 16.0  #: ... and at most
    homeserver_restarts: int = 1
    homeserver_down_s: float = 5.0
    max_workers: int = 2  #: ``[dag.local] max_workers`` of each node
    drain: float = 180.0  #: the most the run waits for the last runs' ends
    seed: int = 1

    def problems(self) -> list[str]:
        found = ClusterOptions(nodes=self.nodes, mode=self.mode, max_workers=self.max_workers).problems()
        if self.mode not in ("matrix", "federation"):
            found.append("--mode must be matrix or federation")
        if self.runs < 1 or self.fan_out < 1:
            found.append("--runs and --fan-out must be at least 1")
        if self.node_kills < 0 or self.homeserver_restarts < 0:
            found.append("--node-kills and --homeserver-restarts must not be negative")
        if not 0 < self.down_min <= self.down_max:
            found.append("--down-min must be positive and at most --down-max")
        if self.homeserver_down_s < 0 or self.drain <= 0:
            found.append("--homeserver-down must not be negative and --drain must be positive")
        return found


#: ``--quick``: the same run, small (a test's or a first look's).
QUICK = ClusterChaosOptions(runs=4, fan_out=2, node_kills=2, drain=120.0)


def dag_file(number: int, rng: random.Random, fan_out: int, agents: int) -> tuple[str, list[str]]:
    """Run ``number``'s DAG file: a root, ``fan_out`` tasks reading its output, a join; and its task ids."""

    def agent() -> str:
        return f"agent-{rng.randrange(agents)}"

    lines = [f'dag_id = "chaos-{number}"', "max_workers = 8"]
    ids = ["root", *(f"part-{i}" for i in range(fan_out)), "join"]
    lines += ["[[tasks]]", 'id = "root"', f'agent = "{agent()}"', f'prompt = "run {number}: start"', f'timeout = "{RUN_TIMEOUT}"']
    for i in range(fan_out):
        lines += ["[[tasks]]", f'id = "part-{i}"', 'deps = ["root"]', f'agent = "{agent()}"',
                  f'prompt = "run {number} part {i} of {{{{ root.output }}}}"', f'timeout = "{RUN_TIMEOUT}"']
    parts = ", ".join(f'"part-{i}"' for i in range(fan_out))
    lines += ["[[tasks]]", 'id = "join"', f"deps = [{parts}]", f'agent = "{agent()}"',
              f'prompt = "run {number}: join"', f'timeout = "{RUN_TIMEOUT}"']
    return "\n".join(lines) + "\n", ids


class ClusterChaos:
    def __init__(self, stack: ClusterStack, options: ClusterChaosOptions, write: Callable[[str], Any]) -> None:
        self.stack = stack
        self.options = options
        self.write = write
        self.rng = random.Random(options.seed)
        self.killing_done = trio.Event()
        self.submit_failures = 0

    async def play(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.kill_schedule)
            nursery.start_soon(self.submit_stream)
        await self.drain()

    async def submit_stream(self) -> None:
        """Runs go in one after another while the kills last (and at least every few seconds)."""
        options, rng = self.options, random.Random(self.options.seed + 1)
        # The kill schedule's expected length, so the runs span it.
        span = options.node_kills * ((options.down_min + options.down_max) / 2 + 6) + options.homeserver_restarts * (
            QUIET_BEFORE_S + QUIET_AFTER_S
        )
        pause = max(1.0, span / options.runs)
        for number in range(options.runs):
            text, ids = dag_file(number, rng, options.fan_out, len(self.stack.agents))
            workers = [n.node_id for n in self.stack.nodes] if options.mode == "federation" else None
            for _ in range(20):
                live = [n.index for n in self.stack.nodes if n.alive and not n.paused]
                try:
                    await self.stack.submit(text, ids, via=rng.choice(live) if live else None, workers=workers)
                    break
                except (ClusterError, OSError, KeyError, ValueError) as exc:
                    # The node chosen died under the request (or refused it): another one.
                    self.submit_failures += 1
                    self.write(f"  submit of run {number} failed ({exc}); trying another node")
                    await trio.sleep(1.0)
            await trio.sleep(pause * rng.uniform(0.5, 1.5))

    async def kill_schedule(self) -> None:
        options, stack = self.options, self.stack
        restart_at = {options.node_kills * (k + 1) // (options.homeserver_restarts + 1) for k in range(options.homeserver_restarts)}
        try:
            # Runs first, so the first kill finds work.
            await trio.sleep(8.0)
            for kill in range(options.node_kills + 1):
                if kill in restart_at:
                    await self.homeserver_restart()
                if kill == options.node_kills:
                    break
                index = self.target()
                stack.kill_node(index)
                self.write(f"  kill {kill + 1}/{options.node_kills}: {stack.nodes[index].node_id} (SIGKILL)")
                await trio.sleep(self.rng.uniform(options.down_min, options.down_max))
                await stack.start_node(index)
                await trio.sleep(self.rng.uniform(0.5, 4.0))
        finally:
            self.killing_done.set()

    async def homeserver_restart(self) -> None:
        self.write(f"  quiet for {QUIET_BEFORE_S:.0f} s, then the homeserver restarts (down {self.options.homeserver_down_s:g} s)")
        await trio.sleep(QUIET_BEFORE_S)
        await self.stack.restart_homeserver(self.options.homeserver_down_s)
        self.write(f"  homeserver back; quiet for {QUIET_AFTER_S:.0f} s")
        await trio.sleep(QUIET_AFTER_S)

    def target(self) -> int:
        """A live node, preferably one holding tasks right now, and not the one killed last
        (a task stuck on a node would otherwise make it the target again and again)."""
        held = holding(self.stack.timeline.events)
        last = next((h.node_id for h in reversed(self.stack.log) if h.kind == "kill"), None)
        live = [n for n in self.stack.nodes if n.alive]
        others = [n for n in live if n.node_id != last] or live
        busy = [n for n in others if held[n.node_id] > 0]
        return self.rng.choice(busy or others).index

    async def drain(self) -> None:
        self.write(f"  draining: waiting up to {self.options.drain:.0f} s for every run's end")
        ends = {e.content.get("run_id") for e in self.stack.timeline.events if e.type in RUN_ENDS}
        waiting = [r for r in self.stack.submitted if r not in ends]
        with trio.move_on_after(self.options.drain):
            for run_id in waiting:
                await self.stack.wait_run_end(run_id, within=self.options.drain + 1)


def holding(events: Iterable[TimelineEvent]) -> Counter[str]:
    """Tasks each node holds: the first claim of a task's newest epoch, until a result or a final status.
    (A rough fold, for choosing whom to kill; the report folds with the ledger.)"""
    winner: dict[tuple[object, object], tuple[int, str]] = {}
    for event in events:
        key = (event.content.get("run_id"), event.content.get("task_id"))
        epoch, node = event.content.get("epoch"), event.content.get("claimed_by")
        if event.type == "cis.dag.task.claimed" and isinstance(epoch, int) and isinstance(node, str):
            if key not in winner or winner[key][0] < epoch:
                winner[key] = (epoch, node)
        elif event.type == "cis.dag.task.result" or (
            event.type == "cis.dag.task.status" and event.content.get("status") in FINAL_TASK_STATUSES
        ):
            winner.pop(key, None)
    return Counter(node for _, node in winner.values())


async def run_cluster_chaos(
    workdir: Path,
    options: ClusterChaosOptions = ClusterChaosOptions(),
    *,
    homeserver: Homeserver | None = None,
    write: Callable[[str], Any] = partial(print, flush=True),
    mask: SecretMask | None = None,
    cluster: ClusterOptions | None = None,
) -> ClusterReport:
    """The whole run in ``workdir`` (a Synapse of its own unless ``homeserver`` is given; then no homeserver restart)."""
    if problems := options.problems():
        raise ClusterError("; ".join(problems))
    if homeserver is not None and options.homeserver_restarts:
        raise ClusterError("homeserver restarts stop the run's own Synapse only: give homeserver_restarts=0")
    started = time.monotonic()
    base = cluster or ClusterOptions()
    setup = replace(base, nodes=options.nodes, mode=options.mode, max_workers=options.max_workers)
    write(f"{options.nodes} nodes (mode {options.mode}), {options.runs} runs, {options.node_kills} node kills, "
          f"{options.homeserver_restarts} homeserver restart(s), seed {options.seed}; logs in {workdir}")
    async with open_cluster(workdir, setup, homeserver=homeserver) as stack:
        if mask is not None:
            mask.add(stack.token)
            mask.add(stack.homeserver.registration_shared_secret)
            for account in (*(n.account for n in stack.nodes), stack.observer):
                mask.add(account.password)
                mask.add(account.access_token)
        chaos = ClusterChaos(stack, options, write)
        write(f"  {options.nodes} nodes up in {time.monotonic() - started:.0f} s")
        await chaos.play()
        report = stack.report()
        write("  stopping the nodes")
    report.duration_s = round(time.monotonic() - started, 1)
    return report


# -- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chaos --nodes N`` (``--seed``, ``--json`` and ``--keep`` are chaos's own, shared)."""
    d = ClusterChaosOptions()
    group = parser.add_argument_group("several nodes (with --nodes N; docs/chaos.md \"Several nodes\")")
    add = group.add_argument
    add("--nodes", type=int, default=None, metavar="N",
        help=f"run N node processes sharing DAG runs instead of the bot run (the documented run: {d.nodes})")
    add("--mode", choices=("matrix", "federation"), default=d.mode, help="execution mode of the nodes (default: %(default)s)")
    add("--runs", type=int, default=d.runs, help="DAG runs submitted over the run (default: %(default)s)")
    add("--fan-out", type=int, default=d.fan_out, help="tasks between each run's root and join (default: %(default)s)")
    add("--node-kills", type=int, default=d.node_kills, help="node SIGKILLs, each restarted after a while (default: %(default)s)")
    add("--down-min", type=float, default=d.down_min, help="shortest time a killed node stays down, s (default: %(default)s)")
    add("--down-max", type=float, default=d.down_max, help="longest time a killed node stays down, s (default: %(default)s)")
    add("--homeserver-restarts", type=int, default=d.homeserver_restarts,
        help="homeserver restarts, with no node kill around them (default: %(default)s)")
    add("--homeserver-down", type=float, default=d.homeserver_down_s, dest="homeserver_down_s",
        help="seconds the homeserver stays down at a restart (default: %(default)s)")
    add("--max-workers", type=int, default=d.max_workers, help="[dag.local] max_workers of every node (default: %(default)s)")
    add("--drain", type=float, default=d.drain, help="longest wait for the last runs' ends, s (default: %(default)s)")
    add("--quick", action="store_true", help=f"a small run of several nodes (--nodes {QUICK.nodes} unless given): {QUICK.runs} runs, "
             f"{QUICK.node_kills} kills, one homeserver restart")


def options_from(args: argparse.Namespace) -> ClusterChaosOptions:
    base = QUICK if args.quick else ClusterChaosOptions()
    d = ClusterChaosOptions()
    chosen: dict[str, Any] = {}
    for f in fields(ClusterChaosOptions):
        value = getattr(args, f.name, None)
        # An option left at its default keeps --quick's value.
        if value is not None and value != getattr(d, f.name):
            chosen[f.name] = value
    return replace(base, **chosen)


def run(args: argparse.Namespace) -> int:
    """0: the goals hold; 1: one does not (or the run failed); 2: cannot start; 130: Ctrl-C."""
    from .chaos import run_command

    options = options_from(args)
    return run_command(
        args, options.problems(), partial(run_cluster_chaos, options=options),
        show=lambda report, write: print_table(report), prefix="lambda-actors-cluster-chaos-",
        logs="tracebacks in driver.log, node logs in node-*/",
        kept="(report.json, timeline.json, harness.json, node-*/node.log)",
    )


def print_table(report: ClusterReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chaos --nodes: several nodes under SIGKILL")
    table.add_column("figure")
    table.add_column("value")
    for name, value in report.rows():
        table.add_row(name, value)
    goals = Table(title="goals")
    goals.add_column("goal")
    goals.add_column("met")
    for name, met in report.goals().items():
        goals.add_row(name, "yes" if met else "[bold red]NO[/]")
    console = Console()
    console.print(table)
    console.print(goals)
