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
  goal 0): the Matrix requests the node's broadcaster makes for a 200-task
  run's status (status events, the board, finding the room, inviting the
  owner, reading back at start), per second of the run, against a real local
  Synapse. The run is synthetic: transitions written into a DagStore with
  their status events at a realistic pace (a layered DAG of 10 layers of 20
  tasks, 8 at a time, each taking 0.4-1.2 s) and the broadcaster poked after
  each write, exactly as the run actors do; the run actors themselves are
  left out so the figure is the broadcaster's alone. ``events_lost``: tasks
  whose final status a subscriber (dag/subscribe.py's pure parts) does not
  rebuild from the room's history.

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
from typing import Any

import tomli

from lambda_actors.dag.spec import parse_dag


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


def status_requests(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import trio

    with tempfile.TemporaryDirectory(prefix="lambda-bench-dag-") as directory:
        return trio.run(_status_requests, directory)


async def _status_requests(directory: str) -> dict[str, Any]:
    import random
    from pathlib import Path

    import httpx
    import trio

    import lambda_actors as la
    from lambda_actors.dag import status as st
    from lambda_actors.dag.actors.broadcast import broadcaster_actor, poke
    from lambda_actors.dag.store import TaskStatus, open_dag_store
    from lambda_actors.dag.subscribe import Watch, logical_events
    from lambda_actors.loopback.homeserver import register_user, start_synapse, stop_synapse
    from lambda_actors.matrix import MatrixClient

    server = start_synapse(Path(directory) / "synapse")
    try:
        node = register_user(server.url, server.registration_shared_secret, "node", "node-password")
        owner = register_user(server.url, server.registration_shared_secret, "owner", "owner-password")
        store = open_dag_store(Path(directory) / "bot.sqlite3")
        spec = parse_dag(layered_dag_toml(10, 20).replace('dag_id = "bench"', f'dag_id = "bench"\nowner = "{owner.user_id}"'))
        store.publish(spec, "bench", time.time())
        requests: dict[str, int] = {}

        counting = [True]

        async def count(request: httpx.Request) -> None:
            if not counting[0]:
                return
            kind = "events" if "/send/cis." in request.url.path else "board" if "/send/m.room.message" in request.url.path else "other"
            requests[kind] = requests.get(kind, 0) + 1

        http = httpx.AsyncClient(event_hooks={"request": [count]}, timeout=60)
        client = MatrixClient(server.url, access_token=node.access_token, user_id=node.user_id, device_id=node.device_id, http=http)
        rng = random.Random(14)
        at = lambda: datetime.now(UTC)  # noqa: E731

        def progress(run_id: str) -> st.Progress:
            return st.Progress(**store.progress(run_id))

        def task_event(run_id: str, task_id: str, status: str) -> tuple[str, dict[str, Any]]:
            ev = st.task_status(run_id, task_id, status, agent_type="agent-0", session_id=f"{run_id}:{task_id}",
                                attempt=1, progress=progress(run_id), at=at())
            return ev.type, dict(ev.content)

        spec_child = la.ChildSpec("dag-broadcast", lambda ctx: broadcaster_actor(ctx, client, store, f"#dag-status-bench:{client.server_name}", node_id="bench"))
        async with la.open_supervisor("node", [spec_child]) as sup:
            started = time.perf_counter()
            created = st.run_created("x", "bench", "bench.toml", 8, False, at=at())
            run_id = store.create_run(spec, time.time()).run_id
            store.append_status_events(run_id, [(created.type, {**created.content, "run_id": run_id})], time.time())
            ev = st.run_event(st.RUN_STARTED, run_id, "bench", progress(run_id), at=at())
            store.set_run_status(run_id, "running", time.time(), events=[(ev.type, dict(ev.content))])
            poke(sup.registry)
            deps = {t.id: set(t.deps) for t in spec.tasks}
            slots = trio.Semaphore(8)

            async def run_task(task_id: str, ready: trio.Event) -> None:
                for dep in deps[task_id]:
                    await finished[dep].wait()
                async with slots:
                    store.start_attempt(run_id, task_id, time.time(), events=[task_event(run_id, task_id, "running")])
                    poke(sup.registry)
                    await trio.sleep(rng.uniform(0.4, 1.2))
                    out = st.task_output(run_id, task_id, f"output of {task_id}", at=at())
                    with store.batch():
                        store.finish(run_id, task_id, TaskStatus.COMPLETED, time.time(), output=f"output of {task_id}")
                        store.append_status_events(run_id, [task_event(run_id, task_id, "completed"), (out.type, dict(out.content))], time.time())
                    poke(sup.registry)
                ready.set()

            finished = {t.id: trio.Event() for t in spec.tasks}
            async with trio.open_nursery() as nursery:
                for t in spec.tasks:
                    nursery.start_soon(run_task, t.id, finished[t.id])
            ev = st.run_event(st.RUN_COMPLETED, run_id, "bench", progress(run_id), at=at())
            store.set_run_status(run_id, "completed", time.time(), events=[(ev.type, dict(ev.content))])
            poke(sup.registry)
            run_s = time.perf_counter() - started
            while store.status_backlog():
                await trio.sleep(0.05)
            caught_up_s = time.perf_counter() - started - run_s
            # Let the board's final edit out (at most one throttle interval).
            await trio.sleep(2.5)
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
        lost = sum(1 for task in store.tasks(run_id) if table.get((run_id, task.task_id)) != str(task.status))
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
        "status_run_s": round(run_s, 1),
        "status_catch_up_s": round(caught_up_s, 2),
        "events_lost": lost,
    }


#: name -> the function measuring it (in the order they run).
FIGURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "validate": validate,
    "status_requests": status_requests,
}


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
