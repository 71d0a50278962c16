"""node.toml: every problem at once with its key path; tokens only as hashes."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from lambda_actors.node.config import (
    Listen,
    NodeConfig,
    NodeConfigError,
    load_node_config,
    new_token,
    parse_listen,
    parse_node_config,
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
