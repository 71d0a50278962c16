"""``lambda-actors dag validate FILE``: offline, exit 0 valid / 2 invalid, one line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lambda_actors.cli import main

ROOT = Path(__file__).resolve().parents[2]
AGENTS_YAML = ROOT / "config" / "agents.yaml"  # configures agent-0 and agent-1

GOOD = """
dag_id = "demo"
[[tasks]]
id = "a"
agent = "agent-0"
prompt = "hi"
[[tasks]]
id = "b"
deps = ["a"]
agent = "agent-1"
prompt = "{{ a.output }}"
"""

BAD = """
dag_id = "demo"
[[tasks]]
id = "a"
agent = "agent-7"
deps = ["b"]
prompt = "hi"
[[tasks]]
id = "b"
deps = ["a"]
command = ["make"]
timeout = "5 min"
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_valid_file_without_agents_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.toml", GOOD)
    assert main(["dag", "validate", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: valid: dag demo, 2 task(s), version ")
    assert out[1] == f"{path}: note: agent ids were not checked (no --config agents.yaml given)"


def test_an_invalid_file_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.toml", BAD)
    assert main(["dag", "validate", path, "--config", str(AGENTS_YAML)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == [
        f"{path}: tasks.a.agent: unknown agent 'agent-7' (known: agent-0, agent-1); "
        "use a configured agent id or register the agent",
        f"{path}: tasks.b.command: this node does not run commands ([dag] allow_commands = false); "
        "use an agent task, or set allow_commands = true in node.toml",
        f"{path}: tasks.b.timeout: '5 min' is not a duration; write a duration such as '30s', '10m' or '1h30m' "
        "(or whole seconds)",
        f"{path}: tasks.a: dependency cycle a -> b -> a (each depends on the next); remove one of these deps",
    ]
    assert all(line.startswith(f"{path}: note: ") for line in err[4:])


def test_node_config_allows_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dag = write(tmp_path, "cmd.toml", 'dag_id = "c"\n[[tasks]]\nid = "t"\ncommand = ["true"]\n')
    assert main(["dag", "validate", dag]) == 2
    node = write(tmp_path, "node.toml", "[dag]\nallow_commands = true\n")
    assert main(["dag", "validate", dag, "--node-config", node]) == 0
    capsys.readouterr()


def test_unusable_inputs_are_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.toml")
    assert main(["dag", "validate", missing]) == 2
    assert capsys.readouterr().err == f"{missing}: no such file; give the path of the DAG file\n"
    assert main(["dag", "validate", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    good = write(tmp_path, "good.toml", GOOD)
    broken_node = write(tmp_path, "node.toml", "[dag]\nallow_commands = 'yes'\n")
    assert main(["dag", "validate", good, "--node-config", broken_node]) == 2
    assert "dag.allow_commands" in capsys.readouterr().err
    assert main(["dag", "validate", good, "--config", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_json_files_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "dag.json", '{"dag_id": "j", "tasks": [{"id": "a", "agent": "agent-0", "prompt": "p"}]}')
    assert main(["dag", "validate", path, "--config", str(AGENTS_YAML)]) == 0
    assert "valid: dag j" in capsys.readouterr().out


def test_the_installed_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", BAD)
    done = subprocess.run(
        [sys.executable, "-m", "lambda_actors", "dag", "validate", path], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
