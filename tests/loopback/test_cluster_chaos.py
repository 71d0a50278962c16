"""``chaos --nodes N`` without a homeserver: its options, its exit status for bad ones, its DAG files.

The run itself needs Synapse and takes minutes (``lambda-actors chaos --nodes 3``);
its figures are folded by ``cluster_report`` (``test_cluster_report.py``) and
its harness is exercised by ``tests/e2e/test_e2e_cluster.py``.
"""

from __future__ import annotations

import argparse
import random

from lambda_actors.cli import main
from lambda_actors.dag.spec import parse_dag
from lambda_actors.loopback import chaos
from lambda_actors.loopback.cluster import ClusterOptions, node_ids, node_toml
from lambda_actors.node.config import parse_node_config
from lambda_actors.loopback.cluster_chaos import QUICK, ClusterChaosOptions, dag_file, holding, options_from
from lambda_actors.loopback.cluster_report import TimelineEvent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    chaos.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_nodes_the_bot_run_keeps_its_options():
    args = parse("--seed", "4")
    assert args.nodes is None and args.seed == 4


def test_quick_is_the_small_run_and_options_given_win_over_it():
    assert options_from(parse("--nodes", "3", "--quick")) == QUICK
    assert options_from(parse("--quick")) == QUICK  # --quick alone is the several-node run
    chosen = options_from(parse("--nodes", "4", "--quick", "--node-kills", "5", "--mode", "federation", "--seed", "9"))
    assert (chosen.nodes, chosen.node_kills, chosen.mode, chosen.seed, chosen.runs) == (4, 5, "federation", 9, QUICK.runs)
    assert options_from(parse("--nodes", "3")) == ClusterChaosOptions()


def test_the_documented_run_meets_the_issues_size():
    default = ClusterChaosOptions()
    assert default.nodes == 3 and default.node_kills >= 20 and default.homeserver_restarts == 1
    assert default.problems() == []


def test_bad_options_exit_2_with_every_problem_on_one_line(capsys):
    status = main(["chaos", "--nodes", "1", "--runs", "0", "--down-min", "9", "--down-max", "3"])
    err = capsys.readouterr().err
    assert status == 2
    assert "--nodes must be at least 2" in err and "--runs and --fan-out must be at least 1" in err
    assert "--down-min must be positive and at most --down-max" in err
    assert "Traceback" not in err


def test_a_runs_dag_file_is_a_valid_fan_out_and_fan_in():
    text, ids = dag_file(7, random.Random(1), 3, agents=4)
    spec = parse_dag(text)
    assert spec.dag_id == "chaos-7"
    assert [t.id for t in spec.tasks] == ids == ["root", "part-0", "part-1", "part-2", "join"]
    by_id = {t.id: t for t in spec.tasks}
    assert all(tuple(by_id[f"part-{i}"].deps) == ("root",) for i in range(3))
    assert set(by_id["join"].deps) == {"part-0", "part-1", "part-2"}
    assert "{{ root.output }}" in (by_id["part-0"].prompt or "")


def test_a_node_holds_the_tasks_whose_newest_claim_it_won_until_their_result():
    def event(kind: str, **content: object) -> TimelineEvent:
        return TimelineEvent(kind, {"run_id": "r", **content}, "@x:localhost", 0)

    events = [
        event("cis.dag.task.claimed", task_id="a", claimed_by="node-b", epoch=1),
        event("cis.dag.task.claimed", task_id="a", claimed_by="node-c", epoch=1),  # lost the race
        event("cis.dag.task.claimed", task_id="b", claimed_by="node-b", epoch=1),
        event("cis.dag.task.claimed", task_id="b", claimed_by="node-a", epoch=2),  # taken over
        event("cis.dag.task.claimed", task_id="c", claimed_by="node-c", epoch=1),
        event("cis.dag.task.result", task_id="c", reported_by="node-c", epoch=1, outcome="completed"),
    ]
    assert holding(events) == {"node-b": 1, "node-a": 1}


def test_each_nodes_toml_is_one_the_node_accepts_with_its_own_mode_and_rooms():
    options = ClusterOptions(nodes=3, modes=("matrix", "federation"), max_workers=3,
                             cluster_room="#c-x:localhost", heartbeat_room="#h-x:localhost")
    configs = [parse_node_config(node_toml(node_id, "a" * 64, options, options.mode_of(i)))
               for i, node_id in enumerate(node_ids(3))]
    assert [c.node_id for c in configs] == ["node-a", "node-b", "node-c"]
    assert [str(c.dag.execution_mode) for c in configs] == ["matrix", "federation", "matrix"]
    assert all(c.dag.accept_remote_tasks and c.dag.local.max_workers == 3 for c in configs)
    assert all(c.dag.cluster.room == "#c-x:localhost" and c.node_heartbeat.room == "#h-x:localhost" for c in configs)
    assert all(c.clients[0].scopes == frozenset({"dag"}) for c in configs)
