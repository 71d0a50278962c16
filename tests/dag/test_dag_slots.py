"""The node's slots shared by runs: limits, priorities, order of readiness."""

from __future__ import annotations

from lambda_actors.dag.scheduler import Scheduler
from lambda_actors.dag.slots import Grant, Ready, RunDemand, allocate
from lambda_actors.dag.spec import Priority, parse_dag


def run(run_id: str, priority: Priority, *ready: tuple[str, float], holding: int = 0, max_workers: int | None = None) -> RunDemand:
    return RunDemand(run_id, priority, max_workers, holding, [Ready(t, at, n) for n, (t, at) in enumerate(ready)])


def test_higher_priority_runs_start_first() -> None:
    low = run("low", Priority.LOW, ("l1", 0.0))
    normal = run("normal", Priority.NORMAL, ("n1", 1.0))
    critical = run("crit", Priority.CRITICAL, ("c1", 5.0), ("c2", 6.0))
    assert allocate(3, [low, normal, critical]) == [Grant("crit", "c1"), Grant("crit", "c2"), Grant("normal", "n1")]


def test_order_of_readiness_within_a_priority() -> None:
    a = run("a", Priority.HIGH, ("a1", 3.0), ("a2", 4.0))
    b = run("b", Priority.HIGH, ("b1", 1.0), ("b2", 3.5))
    assert allocate(3, [a, b]) == [Grant("b", "b1"), Grant("a", "a1"), Grant("b", "b2")]


def test_node_slots_count_what_runs_hold() -> None:
    a = run("a", Priority.NORMAL, ("a1", 0.0), ("a2", 0.0), holding=3)
    b = run("b", Priority.NORMAL, ("b1", 0.0), holding=0)
    assert allocate(4, [a, b]) == [Grant("a", "a1")]
    assert allocate(3, [a, b]) == []
    assert allocate(2, [a, b]) == []  # over the limit (lowered): nothing, and no error


def test_a_run_never_passes_its_own_max_workers() -> None:
    capped = run("capped", Priority.CRITICAL, ("c1", 0.0), ("c2", 0.0), ("c3", 0.0), holding=1, max_workers=2)
    other = run("other", Priority.LOW, ("o1", 9.0), ("o2", 9.0))
    # The capped run's extra tasks do not hold back a lower-priority run.
    assert allocate(4, [capped, other]) == [Grant("capped", "c1"), Grant("other", "o1"), Grant("other", "o2")]


def test_no_node_limit() -> None:
    a = run("a", Priority.NORMAL, *[(f"t{i}", float(i)) for i in range(50)], max_workers=None)
    assert len(allocate(None, [a])) == 50


def test_schedulers_share_the_node_through_their_demand() -> None:
    def spec(dag_id: str, priority: str, n: int) -> Scheduler:
        doc = {
            "dag_id": dag_id,
            "priority": priority,
            "tasks": [{"id": f"t{i}", "agent": "a", "prompt": "p"} for i in range(n)],
        }
        return Scheduler(parse_dag(doc), auto_launch=False)

    low, high = spec("low", "low", 3), spec("high", "high", 3)
    low.start(0)
    high.start(1)  # ready later, but more urgent
    grants = allocate(4, [low.demand("low"), high.demand("high")])
    assert grants == [Grant("high", f"t{i}") for i in range(3)] + [Grant("low", "t0")]
    for g in grants:
        (high if g.run_id == "high" else low).launch(g.task_id, 2)
    assert allocate(4, [low.demand("low"), high.demand("high")]) == []
    high.succeeded("t0", 1, "", 3)  # a slot frees: the low run's next task gets it
    assert allocate(4, [low.demand("low"), high.demand("high")]) == [Grant("low", "t1")]
