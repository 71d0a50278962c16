"""node.toml: every problem at once with its key path; tokens only as hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from lambda_actors.node.config import (
    DagBroadcast,
    DagConfig,
    DagLocal,
    ExecutionMode,
    Listen,
    NodeConfig,
    NodeConfigError,
    NodeHeartbeat,
    load_node_config,
    new_token,
    parse_listen,
    parse_node_config,
    unbuilt_mode,
)

GOOD_HASH = hashlib.sha256(b"secret-token").hexdigest()


def test_a_missing_default_file_means_all_defaults(tmp_path):
    config = load_node_config(tmp_path / "node.toml")
    assert config.listen == Listen("127.0.0.1", 8470)
    assert config.clients == ()


def test_a_missing_file_the_operator_named_is_an_error(tmp_path):
    with pytest.raises(NodeConfigError, match="no such file"):
        load_node_config(tmp_path / "node.toml", required=True)


def test_a_full_file_is_read():
    config = parse_node_config(
        f"""
node_id = "node-a"
[api]
listen = "[::1]:9000"
[[api.clients]]
name = "gateway"
token_sha256 = "{GOOD_HASH}"
scopes = ["approvals", "agents"]
"""
    )
    assert config.node_id == "node-a"
    assert config.listen == Listen("::1", 9000)
    (client,) = config.clients
    assert client.scopes == frozenset({"approvals", "agents"})
    assert config.client_for("secret-token") is client
    assert config.client_for("secret-tokeN") is None


def test_every_problem_is_reported_at_once_with_its_path():
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config(
            """
node_id = "bad id!"
colour = "blue"
[api]
listen = "localhost"
[[api.clients]]
name = "a"
token = "plain"
token_sha256 = "abc"
scopes = ["approvals", "root"]
[[api.clients]]
scopes = []
""",
            source="node.toml",
        )
    where = [path for path, _ in caught.value.problems]
    assert where == [
        "colour",
        "node_id",
        "api.listen",
        "api.clients[0].token",
        "api.clients[0].token_sha256",
        "api.clients[0].scopes",
        "api.clients[1].name",
        "api.clients[1].token_sha256",
        "api.clients[1].scopes",
    ]
    text = str(caught.value)
    assert text.count("node.toml: ") == len(where)
    assert "lambda-actors token" in text  # the fix is named
    assert "plain" not in text  # a secret is never echoed


def test_two_clients_may_not_share_a_name_or_a_token():
    entry = f'[[api.clients]]\nname = "a"\ntoken_sha256 = "{GOOD_HASH}"\nscopes = ["dag"]\n'
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config(entry + entry)
    assert [p for p, _ in caught.value.problems] == ["api.clients[1].name", "api.clients[1].token_sha256"]


def test_toml_syntax_errors_are_one_line_with_the_fix():
    with pytest.raises(NodeConfigError, match="TOML syntax error"):
        parse_node_config("node_id = ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8470", Listen("127.0.0.1", 8470)), ("off", None), ("OFF", None), ("[::1]:1", Listen("::1", 1))],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8470", ":8470", "host:0", "host:70000", "[nope]:80", "host:http"])
def test_bad_listen_addresses_say_how_to_write_one(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_a_new_token_matches_its_hash_and_is_never_the_same():
    token, digest = new_token()
    assert hashlib.sha256(token.encode()).hexdigest() == digest
    assert new_token()[0] != token
    assert NodeConfig(clients=()).client_for(token) is None


def test_the_token_command_prints_a_line_node_toml_accepts(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lambda_actors.cli", "token", "--name", "ci", "--scopes", "approvals"],
        capture_output=True, text=True, check=True,
    ).stdout
    token = out.split("\n\n")[1].strip()
    snippet = out[out.index("[[api.clients]]"):]
    config = parse_node_config(snippet)
    assert config.client_for(token).name == "ci"
    assert config.client_for(token).scopes == frozenset({"approvals"})


# --- [dag] and [matrix.*] (SPEC section 10) --------------------------------------------


def test_the_dag_and_matrix_defaults_are_the_specs():
    config = parse_node_config("")
    assert config.dag == DagConfig(
        execution_mode=ExecutionMode.HYBRID, allow_commands=False, accept_remote_tasks=False,
        local=DagLocal(max_workers=4, default_agent="agent-0"),
    )
    assert config.dag_broadcast == DagBroadcast(enabled=True, room="", batch_interval_ms=500, broadcast_output=True)
    assert config.node_heartbeat == NodeHeartbeat(enabled=True, room="", interval_secs=30, include_resources=True)
    assert config == NodeConfig(node_id=config.node_id, source=config.source)


def test_the_dag_and_matrix_sections_are_read():
    config = parse_node_config(
        """
node_id = "node-a"
[dag]
execution_mode = "local"
allow_commands = true
accept_remote_tasks = true
[dag.local]
max_workers = 16
default_agent = "did:key:z6Mk"
[matrix.dag_broadcast]
enabled = false
room = "#runs:example.org"
batch_interval_ms = 250
broadcast_output = false
[matrix.node_heartbeat]
enabled = false
room = "!abc:example.org"
interval_secs = 5
include_resources = false
"""
    )
    assert config.dag == DagConfig(ExecutionMode.LOCAL, True, True, DagLocal(16, "did:key:z6Mk"))
    assert config.dag_broadcast == DagBroadcast(False, "#runs:example.org", 250, False)
    assert config.node_heartbeat == NodeHeartbeat(False, "!abc:example.org", 5, False)


def test_the_default_rooms_are_the_specs_aliases():
    config = parse_node_config('node_id = "node-a"')
    assert config.dag_broadcast.room_for(config.node_id, "example.org") == "#dag-status-node-a:example.org"
    assert config.node_heartbeat.room_for("example.org") == "#node-heartbeat-default:example.org"
    named = parse_node_config('[matrix.dag_broadcast]\nroom = "#x:y"\n[matrix.node_heartbeat]\nroom = "#h:y"\n')
    assert named.dag_broadcast.room_for("node-a", "example.org") == "#x:y"
    assert named.node_heartbeat.room_for("example.org") == "#h:y"


def test_every_dag_and_matrix_problem_is_reported_at_once_with_its_path():
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config(
            """
[dag]
execution_mode = "cluster"
allow_commands = "yes"
accept_remote_tasks = 1
max_workers = 4
[dag.local]
max_workers = 0
default_agent = ""
[matrix]
homeserver = "https://x"
[matrix.dag_broadcast]
enabled = "true"
room = "dag-status"
batch_interval_ms = 0.5
broadcast_outputs = true
[matrix.node_heartbeat]
room = "#no-server"
interval_secs = 0
include_resources = "no"
""",
            source="node.toml",
        )
    problems = dict(caught.value.problems)
    assert list(problems) == [
        "dag.max_workers",
        "dag.execution_mode",
        "dag.allow_commands",
        "dag.accept_remote_tasks",
        "dag.local.max_workers",
        "dag.local.default_agent",
        "matrix.homeserver",
        "matrix.dag_broadcast.broadcast_outputs",
        "matrix.dag_broadcast.enabled",
        "matrix.dag_broadcast.room",
        "matrix.dag_broadcast.batch_interval_ms",
        "matrix.node_heartbeat.room",
        "matrix.node_heartbeat.interval_secs",
        "matrix.node_heartbeat.include_resources",
    ]
    # Each says what a good value is.
    assert "local | hybrid | matrix | federation" in problems["dag.execution_mode"]
    assert "unknown key" in problems["dag.max_workers"] and "local" in problems["dag.max_workers"]
    assert "broadcast_output" in problems["matrix.dag_broadcast.broadcast_outputs"]
    assert "1 to 1024" in problems["dag.local.max_workers"]
    assert "#name:server" in problems["matrix.dag_broadcast.room"]
    assert "true or false" in problems["matrix.node_heartbeat.include_resources"]


def test_sections_that_are_not_tables_are_refused_by_path():
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config('dag = "local"\nmatrix = 1\n')
    assert [p for p, _ in caught.value.problems] == ["dag", "matrix"]
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config('[dag]\nlocal = 4\n[matrix]\ndag_broadcast = true\nnode_heartbeat = []\n')
    assert [p for p, _ in caught.value.problems] == ["dag.local", "matrix.dag_broadcast", "matrix.node_heartbeat"]


@pytest.mark.parametrize("mode", ["local", "hybrid", "matrix", "federation"])
def test_every_mode_starts(mode):
    assert unbuilt_mode(parse_node_config(f'[dag]\nexecution_mode = "{mode}"\n')) is None


def test_the_cluster_room_defaults_per_server_and_may_be_named():
    assert parse_node_config("").dag.cluster.room_for("example.org") == "#dag-cluster-default:example.org"
    named = parse_node_config('[dag.cluster]\nroom = "#ours:example.org"\n')
    assert named.dag.cluster.room_for("example.org") == "#ours:example.org"
    with pytest.raises(NodeConfigError) as caught:
        parse_node_config('[dag.cluster]\nroom = "ours"\nrooms = 1\n')
    assert [p for p, _ in caught.value.problems] == ["dag.cluster.rooms", "dag.cluster.room"]


@pytest.mark.parametrize("mode", ["matrix", "federation"])
def test_several_nodes_need_the_heartbeat_room_said_in_one_line(mode):
    config = parse_node_config(
        f'[dag]\nexecution_mode = "{mode}"\n[matrix.node_heartbeat]\nenabled = false\n', source="node.toml"
    )
    line = unbuilt_mode(config)
    assert line is not None and "\n" not in line
    assert line.startswith("node.toml: matrix.node_heartbeat.enabled: ") and "set it to true" in line


def test_run_refuses_a_cluster_mode_without_heartbeats_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "agents.yaml").write_text(
        'agents:\n  - id: agent-0\n    base_url: "http://127.0.0.1:9/agent_0/"\n    workspace_path: "work/0"\n'
    )
    (tmp_path / "node.toml").write_text(
        '[dag]\nexecution_mode = "federation"\n[matrix.node_heartbeat]\nenabled = false\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "LAMBDA_ACTORS_"))}
    env.update(
        MATRIX_HOMESERVER="http://127.0.0.1:9", MATRIX_USER_ID="@lambda:example.org", MATRIX_PASSWORD="unused"
    )
    result = subprocess.run(
        [sys.executable, "-m", "lambda_actors", "run", "--config", "agents.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "matrix.node_heartbeat.enabled: mode 'federation' needs the heartbeat room" in result.stderr
