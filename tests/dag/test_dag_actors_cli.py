"""``lambda-actors dag run|status|list|cancel|pause|resume``: what an operator
sees when the node cannot be used (the happy path is tests/e2e/test_e2e_dag.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambda_actors.cli", "dag", *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_no_token_is_exit_3_with_the_fix() -> None:
    result = _dag("list", "--api", f"http://127.0.0.1:{_closed_port()}")
    assert result.returncode == 3
    assert result.stderr.strip() == "no API token: set LAMBDA_API_TOKEN or pass --token-file (a token with scope dag)"


def test_an_unreachable_node_is_exit_4_in_one_line(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("la_secret\n")
    result = _dag("status", "run-x", "--api", f"http://127.0.0.1:{_closed_port()}", "--token-file", str(token))
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot reach the node" in result.stderr
    assert "la_secret" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["cancel", "pause", "resume"])
def test_a_move_needs_a_run_id(command: str) -> None:
    result = _dag(command)
    assert result.returncode == 2 and "RUN_ID" in result.stderr


def test_follow_keeps_each_tasks_latest_status_for_the_live_table() -> None:
    from lambda_actors.dag.cli import _LiveTable

    table = _LiveTable("run-1")
    try:
        table.take("snapshot", {"status": "running", "progress": {"completed": 0, "total": 2},
                                "tasks": [{"task_id": "a", "status": "running", "attempts": 1},
                                          {"task_id": "b", "status": "pending", "attempts": 0}]})
        table.take("cis.dag.task.status", {"task_id": "a", "status": "completed", "attempt": 1,
                                           "progress": {"completed": 1, "total": 2}})
        table.take("cis.dag.session.blocked", {"task_id": "b", "reason": "delete_file"})
        table.take("cis.dag.run.completed", {"progress": {"completed": 2, "total": 2}})
    finally:
        table.close()
    assert table.status == "completed" and table.progress == "2/2 completed"
    assert table.tasks == {"a": ("completed", "1", ""), "b": ("pending", "0", "waits for its owner: delete_file")}


def test_workers_named_twice_are_refused_before_the_node_is_asked(tmp_path: Path) -> None:
    dag = tmp_path / "d.toml"
    dag.write_text('dag_id = "d"\n[[tasks]]\nid = "t"\nagent = "agent-0"\nprompt = "p"\n')
    result = _dag("run", str(dag), "--workers", "node-b,node-b", "--api", f"http://127.0.0.1:{_closed_port()}")
    assert result.returncode == 2
    assert result.stderr.strip() == "--workers: 'node-b,node-b' names a node twice; name each once"
