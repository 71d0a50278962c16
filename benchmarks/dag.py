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

This is a benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
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


#: name -> the function measuring it (in the order they run).
FIGURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "validate": validate,
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
