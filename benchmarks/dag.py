"""Benchmark of DAG runs (SPEC 8, issue 14's figures).

    .venv/bin/python benchmarks/dag.py                     # a table on stdout
    .venv/bin/python benchmarks/dag.py --json              # one JSON object on stdout (the table goes to stderr)
    .venv/bin/python benchmarks/dag.py --only validate     # some figures only (repeat --only)

Each figure is one function of :data:`FIGURES`: it returns a dict of numbers
(the figure, its goal, and whatever explains it). ``main`` runs the ones
asked for, in order, and merges their dicts. Add a figure by writing its
function and adding it to the table.

- **validate** (``validate_10k_s``, goal <= 2): ``parse_dag`` on the TOML
  text of a 10,000-task DAG, as the node does when the DAG is published:
  100 layers of 100 agent tasks, each depending on 3 tasks of the layer
  before (fan-out and fan-in) and naming one of them in its prompt
  (``{{ t-L-I.output }}``), all agents known. The median of 3 runs; also
  split into reading the TOML (``validate_10k_toml_read_s``, tomli: the
  standard library's tomllib compiled) and checking the document (``validate_10k_check_s``,
  all that a DAG published as JSON costs).

- **status_requests** (``status_requests_per_s``, goal <= 2.5; ``events_lost``,
  goal 0): a real 200-task run in ``hybrid`` mode (a DAG of 10 layers of 20
  agent tasks, fan-in 3, 8 at a time) by the node's DAG actors
  (``dag/parts.py``'s ``node/dag`` subtree, a real DagStore in a temporary
  file, every status write poking the broadcaster) beside the broadcaster
  as ``dag/actors/matrix_side.py`` starts it (``node/dag-broadcast``, the
  node.toml defaults: 500 ms batches, outputs on), against a real local
  Synapse (relaxed rate limits) and an in-process fake agent that pauses
  0.4-1.2 s (seeded) before each answer. Counted: every HTTP request of the
  broadcaster's own Matrix client (status events, the board's post and
  edits, finding the room, inviting the owner, the read-back at start) from
  its start until the status backlog is empty and the board's last edit is
  out; the bot's sync and the heartbeats are not part of it (no bot runs).
  Divided by the run's time: confirm -> the run's final event.
  ``events_lost``: tasks whose final status in the store a subscriber
  (dag/subscribe.py's pure parts, reading the room's history after the
  run) does not rebuild.

- **throughput** (``tasks_per_s`` vs ``raw_tasks_per_s``, ``throughput_ratio``
  goal >= 0.7; ``schedule_latency_p50_ms`` goal <= 5): the node's DAG actors
  (``dag/parts.py``'s ``node/dag`` subtree, execution_mode local, a real
  DagStore in a temporary file) run in-process under a runtime supervisor,
  against an in-process fake agent answering at once (one chunk). The DAG is
  20 layers of 25 agent tasks (fan-in 3), 32 at a time, so no ready task waits
  for a slot. The bare program runs the same graph with the same limit, a
  socket per task, dependents started at their last dependency's END, no
  store. The two alternate, 5 runs each, each on a collected heap (neither
  pays a full collection of the other's garbage), the best of each kept (and, beside
  it, ``throughput_ratio_median``: the ratio of the medians). The latency
  is measured on a 100-task chain (one task at a time: the path, not a queue
  for the CPU), run 3 times, over the 297 links together: the agent's END of
  a task -> the next task's USER_MESSAGE at
  the agent; ``schedule_latency_loaded_p50_ms`` is the same measure inside the
  layered run (mostly waiting for the CPU), ``agent_connect_ms`` what opening
  a fresh agent socket costs alone.

This is a benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import tomli

from lambda_actors.dag.spec import parse_dag

if TYPE_CHECKING:
    from lambda_actors.dag.parts import DagParts
    from lambda_actors.dag.store import DagStore


def layered_dag_toml(layers: int, width: int, fan_in: int = 3) -> str:
    """A DAG file of ``layers * width`` agent tasks, each fed by ``fan_in`` tasks of the layer before."""
    lines = ['dag_id = "bench"', 'priority = "normal"', "max_workers = 16", ""]
    for layer in range(layers):
        for i in range(width):
            task_id = f"t-{layer}-{i}"
            lines += ["[[tasks]]", f'id = "{task_id}"', 'agent = "agent-0"']
            if layer:
                deps = [f"t-{layer - 1}-{(i + k) % width}" for k in range(min(fan_in, width))]
                lines.append("deps = [" + ", ".join(f'"{d}"' for d in deps) + "]")
                lines.append(f'prompt = "Go on from: {{{{ {deps[0]}.output }}}}"')
            else:
                lines.append(f'prompt = "Start part {i}"')
            lines += ['timeout = "10m"', "retries = 1", ""]
    return "\n".join(lines)


def _median_s(run: Callable[[], object], rounds: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(rounds):
        started = clock()
        run()
        times.append(clock() - started)
    return round(statistics.median(times), 3)


def validate(args: argparse.Namespace) -> dict[str, Any]:
    text = layered_dag_toml(100, 100)
    document = tomli.loads(text)
    assert len(parse_dag(document).tasks) == 10_000
    return {
        "validate_10k_s": _median_s(lambda: parse_dag(text, known_agents={"agent-0"}, source="bench.toml")),
        "validate_10k_goal_s": 2,
        "validate_10k_bytes": len(text.encode()),
        # Where the time goes: reading the TOML (tomli), and checking the document (what a JSON publish costs).
        "validate_10k_toml_read_s": _median_s(lambda: tomli.loads(text)),
        "validate_10k_check_s": _median_s(lambda: parse_dag(document, known_agents={"agent-0"})),
        # CPU time of the whole, apart from waiting for a core on a busy machine.
        "validate_10k_cpu_s": _median_s(lambda: parse_dag(text, known_agents={"agent-0"}), clock=time.process_time),
    }


#: The status run: 10 layers of 20 agent tasks (fan-in 3), 8 at a time, each
#: answered by the fake agent after a pause drawn from STATUS_ANSWER_S.
STATUS_LAYERS, STATUS_WIDTH, STATUS_SLOTS = 10, 20, 8
STATUS_ANSWER_S = (0.4, 1.2)


def status_requests(args: argparse.Namespace) -> dict[str, Any]:
    """``status_requests_per_s``: the node broadcaster's Matrix requests
    during a real 200-task hybrid run, per second of the run;
    ``events_lost``: tasks whose final status a subscriber does not rebuild
    from the status room's history."""
    import logging
    import tempfile

    import structlog
    import trio

    # A line per task attempt and per send would drown the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="lambda-bench-dag-") as directory:
        return trio.run(_status_requests, directory)


def _pausing_agent(workspace: str) -> Any:
    """A fake agent that thinks before it answers: a pause drawn from
    STATUS_ANSWER_S (seeded, so runs are alike), then its ordinary answer."""
    import random

    import trio

    from lambda_actors.agent.fake import FakeAgent

    rng = random.Random(14)

    class PausingAgent(FakeAgent):
        async def _answer(self, session: Any, message: Any) -> None:  # type: ignore[override]  # instrumentation
            await trio.sleep(rng.uniform(*STATUS_ANSWER_S))
            await super()._answer(session, message)

    return PausingAgent(workspace, chunks=1)


async def _status_requests(directory: str) -> dict[str, Any]:
    from pathlib import Path

    import httpx
    import trio

    from lambda_actors.dag.actors.broadcast import broadcaster_actor
    from lambda_actors.dag.actors.matrix_side import BROADCAST_PATH
    from lambda_actors.dag.parts import DagParts
    from lambda_actors.dag.store import open_dag_store
    from lambda_actors.dag.subscribe import Watch, logical_events
    from lambda_actors.loopback.homeserver import register_user, start_synapse, stop_synapse
    from lambda_actors.matrix import MatrixClient
    from lambda_actors.node.config import DagConfig, DagLocal, ExecutionMode, NodeConfig
    from lambda_actors.runtime.spec import ChildSpec
    from lambda_actors.runtime.supervisor import open_supervisor

    server = start_synapse(Path(directory) / "synapse")
    try:
        node_user = register_user(server.url, server.registration_shared_secret, "node", "node-password")
        owner = register_user(server.url, server.registration_shared_secret, "owner", "owner-password")
        text = layered_dag_toml(STATUS_LAYERS, STATUS_WIDTH).replace(
            'dag_id = "bench"', f'dag_id = "bench"\nowner = "{owner.user_id}"'
        ).replace("max_workers = 16", f"max_workers = {STATUS_SLOTS}")
        config = NodeConfig(node_id="bench", dag=DagConfig(execution_mode=ExecutionMode.HYBRID, local=DagLocal(STATUS_SLOTS)))
        store = open_dag_store(Path(directory) / "bot.sqlite3")
        requests: dict[str, int] = {}
        counting = [True]

        async def count(request: httpx.Request) -> None:
            # Every request of this client is the broadcaster's: nothing else uses it.
            if not counting[0]:
                return
            path = request.url.path
            kind = "events" if "/send/cis." in path else "board" if "/send/m.room.message" in path else "other"
            requests[kind] = requests.get(kind, 0) + 1

        http = httpx.AsyncClient(event_hooks={"request": [count]}, timeout=60)
        client = MatrixClient(server.url, access_token=node_user.access_token, user_id=node_user.user_id,
                              device_id=node_user.device_id, http=http)
        agent = _pausing_agent(directory)
        parts = DagParts.local(store, config, lambda _: agent.base_url, known_agents=lambda a: a == "agent-0")
        assert parts.broadcasting  # hybrid with [matrix.dag_broadcast] on: every status write pokes
        broadcast = config.dag_broadcast

        # The broadcaster as matrix_side.matrix_children starts it beside
        # node/dag (that function wants a whole bot; this is its child, on
        # a client of our own so its requests can be counted).
        async def broadcaster(ctx: Any) -> None:
            await broadcaster_actor(
                ctx, client, store, broadcast.room_for(config.node_id, client.server_name), node_id=config.node_id,
                batch_interval_ms=broadcast.batch_interval_ms, broadcast_output=broadcast.broadcast_output,
            )

        children = [*parts.children(), ChildSpec(BROADCAST_PATH.rsplit("/", 1)[1], broadcaster)]
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve)
            async with open_supervisor("node", children):
                run_id, run_s = await _run_to_end(parts, store, text)
                ended = trio.current_time()
                while store.status_backlog():
                    await trio.sleep(0.05)
                caught_up_s = trio.current_time() - ended
                # Let the board's final edit out (at most one throttle interval).
                await trio.sleep(2.5)
            nursery.cancel_scope.cancel()
        counting[0] = False  # what follows is the subscriber's reading, not the node's
        room_id = store.run(run_id).room_id
        assert room_id is not None, "the broadcaster never recorded the run's room"
        watch = Watch()
        start = None
        while True:
            body = await client.messages(room_id, start=start, limit=500, direction="f")
            for raw in body["chunk"]:
                for index, logical in enumerate(logical_events(raw)):
                    watch.add(logical, index)
            start = body.get("end")
            if not body["chunk"] or start is None:
                break
        table = watch.final_table()
        tasks = store.tasks(run_id)
        lost = sum(1 for task in tasks if table.get((run_id, task.task_id)) != str(task.status))
        await client.aclose()
        await http.aclose()
        store.close()
    finally:
        stop_synapse(Path(directory) / "synapse")
    total = sum(requests.values())
    return {
        "status_requests_per_s": round(total / run_s, 2),
        "status_requests_goal_per_s": 2.5,
        "status_requests": total,
        "status_requests_events": requests.get("events", 0),
        "status_requests_board": requests.get("board", 0),
        "status_requests_other": requests.get("other", 0),
        "status_tasks": len(tasks),
        "status_run_s": round(run_s, 1),
        "status_catch_up_s": round(caught_up_s, 2),
        "events_lost": lost,
    }


# -- throughput: the DAG actors vs a bare Trio program ------------------------------------

#: The throughput DAG: 20 layers of 25 agent tasks (fan-out and fan-in of 3).
THROUGHPUT_LAYERS, THROUGHPUT_WIDTH = 20, 25
#: The latency DAG: a chain, so one task runs at a time and the figure is the
#: path from one END to the next USER_MESSAGE, not a queue for the CPU.
CHAIN_TASKS = 100
#: Runs of each side (node, bare program), alternated: on a shared host a
#: run meets a busy second now and then, and with more runs the best of each
#: side is less a matter of luck.
ROUNDS = 5
#: Runs of the chain; the latency figures are over all their links together.
CHAIN_ROUNDS = 3
#: Tasks at once, in the node and in the bare program alike: the width of a
#: layer fits, so no ready task waits for a slot and the latency figure is
#: the scheduling path alone.
THROUGHPUT_SLOTS = 32


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """``tasks_per_s`` (the node's DAG actors, local mode, with their store) vs
    ``raw_tasks_per_s`` (a bare Trio program, a socket per task, no store),
    the same 500-task graph and concurrency against a fake agent answering at
    once (one chunk), all in this process; ``schedule_latency_p50_ms``: a
    task's last dependency's END sent -> its USER_MESSAGE received by the
    agent, over the node's run."""
    import gc
    import logging
    import tempfile

    import structlog
    import trio

    # Info lines per connection would cost more than the tasks themselves.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # Alternated, the best of each kept: the two sides meet the same machine
    # (its load changes from one second to the next on a shared host). Each
    # run starts on a collected heap: neither pays for the garbage of the one
    # before (a full collection of it costs tens of milliseconds).
    nodes, raws = [], []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as directory:
            gc.collect()
            nodes.append(trio.run(_node_throughput, directory, _graph()[0]))
        with tempfile.TemporaryDirectory() as directory:
            gc.collect()
            raws.append(trio.run(_raw_throughput, directory))
    node = min(nodes, key=lambda r: r["run_s"])
    raw = min(raws, key=lambda r: r["run_s"])
    links: list[float] = []
    for _ in range(CHAIN_ROUNDS):
        with tempfile.TemporaryDirectory() as directory:
            gc.collect()
            links += trio.run(_node_throughput, directory, layered_dag_toml(CHAIN_TASKS, 1, fan_in=1))["latencies"]
    links.sort()
    tasks = THROUGHPUT_LAYERS * THROUGHPUT_WIDTH
    return {
        "tasks_per_s": round(tasks / node["run_s"], 1),
        "raw_tasks_per_s": round(tasks / raw["run_s"], 1),
        "throughput_ratio": round(raw["run_s"] / node["run_s"], 3),
        "throughput_ratio_goal": 0.7,
        "throughput_ratio_median": round(
            statistics.median(r["run_s"] for r in raws) / statistics.median(r["run_s"] for r in nodes), 3
        ),
        "schedule_latency_p50_ms": round(statistics.median(links), 2),
        "schedule_latency_p90_ms": round(links[int(len(links) * 0.9)], 2),
        "schedule_latency_goal_ms": 5,
        "schedule_latency_loaded_p50_ms": round(node["latency_p50_ms"], 2),
        # What a fresh agent context costs alone (socket, upgrade, STATUS), idle.
        "agent_connect_ms": round(raw["connect_ms"], 2),
    }


def _graph() -> tuple[str, dict[str, list[str]]]:
    text = layered_dag_toml(THROUGHPUT_LAYERS, THROUGHPUT_WIDTH).replace(
        "max_workers = 16", f"max_workers = {THROUGHPUT_SLOTS}"
    )
    spec = parse_dag(text)
    return text, {t.id: list(t.deps) for t in spec.tasks}


def _timed_agent(workspace: str) -> Any:
    """A fake agent answering at once that notes when each chat's
    USER_MESSAGE arrived and when its END went out (benchmark instrumentation)."""
    import trio

    from lambda_actors.agent.fake import FakeAgent

    class TimedAgent(FakeAgent):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.arrived: dict[str, float] = {}
            self.ended: dict[str, float] = {}

        async def _answer(self, session: Any, message: Any) -> None:  # type: ignore[override]  # instrumentation
            self.arrived[session.chat_id] = trio.current_time()
            await super()._answer(session, message)
            self.ended[session.chat_id] = trio.current_time()

    return TimedAgent(workspace, chunks=1)


async def _node_throughput(directory: str, text: str) -> dict[str, Any]:
    from pathlib import Path

    import trio

    from lambda_actors.dag.actors.task import chat_id_for
    from lambda_actors.dag.parts import DagParts
    from lambda_actors.dag.store import open_dag_store
    from lambda_actors.node.config import DagConfig, DagLocal, ExecutionMode, NodeConfig
    from lambda_actors.runtime.supervisor import open_supervisor

    deps = {t.id: list(t.deps) for t in parse_dag(text).tasks}
    config = NodeConfig(node_id="bench", dag=DagConfig(execution_mode=ExecutionMode.LOCAL, local=DagLocal(THROUGHPUT_SLOTS)))
    store = open_dag_store(Path(directory) / "bot.sqlite3")
    agent = _timed_agent(directory)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve)
            parts = DagParts.local(store, config, lambda _: agent.base_url, known_agents=lambda a: a == "agent-0")
            async with open_supervisor("node", parts.children()) as _:
                run_id, run_s = await _run_to_end(parts, store, text)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    latencies = []
    for task_id, upstream in deps.items():
        if upstream:
            ready = max(agent.ended[chat_id_for(run_id, d, 1)] for d in upstream)
            latencies.append((agent.arrived[chat_id_for(run_id, task_id, 1)] - ready) * 1000)
    latencies.sort()
    return {
        "run_s": run_s,
        "latencies": latencies,
        "latency_p50_ms": statistics.median(latencies),
        "latency_p90_ms": latencies[int(len(latencies) * 0.9)],
    }


async def _raw_throughput(directory: str) -> dict[str, float]:
    """The same graph by a bare Trio program: a socket per task, a limit of
    THROUGHPUT_SLOTS at once, dependents started at their last dep's END."""
    import trio

    from lambda_actors.agent.client import open_agent_connection
    from lambda_actors.agent.protocol import End, TextChunk

    _, deps = _graph()
    dependents: dict[str, list[str]] = {t: [] for t in deps}
    for task_id, upstream in deps.items():
        for dep in upstream:
            dependents[dep].append(task_id)
    waiting = {t: len(u) for t, u in deps.items()}
    outputs: dict[str, str] = {}
    slots = trio.Semaphore(THROUGHPUT_SLOTS)
    agent = _timed_agent(directory)

    async with trio.open_nursery() as outer:
        await outer.start(agent.serve)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def run(task_id: str) -> None:
                async with slots:
                    async with open_agent_connection(agent.base_url, f"raw.{task_id}") as conn:
                        upstream = deps[task_id]
                        await conn.send_user_message(f"Go on from: {outputs[upstream[0]]}" if upstream else f"Start {task_id}")
                        text = []
                        async for frame in conn:
                            if isinstance(frame, TextChunk):
                                text.append(frame.text)
                            elif isinstance(frame, End):
                                break
                        outputs[task_id] = "".join(text)
                        for dependent in dependents[task_id]:
                            waiting[dependent] -= 1
                            if waiting[dependent] == 0:
                                nursery.start_soon(run, dependent)

            for task_id, count in waiting.items():
                if count == 0:
                    nursery.start_soon(run, task_id)
        run_s = trio.current_time() - started
        connects = []
        for n in range(20):
            began = trio.current_time()
            async with open_agent_connection(agent.base_url, f"idle.{n}"):
                connects.append(trio.current_time() - began)
        outer.cancel_scope.cancel()
    assert len(outputs) == len(deps)
    return {"run_s": run_s, "connect_ms": 1000 * statistics.median(connects)}


#: name -> the function measuring it (in the order they run).
FIGURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "validate": validate,
    "status_requests": status_requests,
    "throughput": throughput,
}



async def _run_to_end(parts: DagParts, store: DagStore, text: str) -> tuple[str, float]:
    """Publish ``text``, confirm a run of it and wait for its end, through the
    node's own API control; the run's id and seconds from confirm to end."""
    import trio

    control = parts.control
    stored = await control.publish(text, "bench")
    started = trio.current_time()
    run_id = await control.confirm(stored.dag_id, stored.version, "bench")
    async with control.watch(run_id) as feed:
        if not store.run(run_id).final:
            async for _event in feed:
                pass
    run_s = trio.current_time() - started
    assert str(store.run(run_id).status) == "completed", store.run(run_id)
    return run_id, run_s


def main() -> int:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    parser.add_argument(
        "--only", action="append", choices=sorted(FIGURES), metavar="FIGURE", help=f"run only these ({', '.join(FIGURES)})"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    table = sys.stderr if args.json else sys.stdout
    for name, measure in FIGURES.items():
        if args.only and name not in args.only:
            continue
        figures = measure(args)
        results.update(figures)
        for key, value in figures.items():
            print(f"{key:32} {value}", file=table)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
