"""agents.yaml and the Matrix environment: valid input loads, anything else is one ConfigError."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_actors.bot.config import (
    DEFAULT_MAX_FILE_BYTES,
    ConfigError,
    MatrixSettings,
    Secret,
    is_matrix_user_id,
    load_agents_config,
    parse_agents_config,
)

REPO = Path(__file__).resolve().parents[2]

VALID = """\
user_agents:
  "@alice:example.org": agent-0
  "@bob:example.org": agent-1
default_agent: null
agents:
  - id: agent-0
    label: "Agent 0"
    base_url: "http://agents.internal:7000/agent_0/"
    workspace_path: "/agents/0"
  - id: agent-1
    label: "Agent 1"
    base_url: "wss://agents.internal/agent_1"
    workspace_path: "/agents/1"
    max_file_bytes: 1000
"""


def parse(text: str) -> object:
    return parse_agents_config(textwrap.dedent(text), source="agents.yaml", base_dir=Path("/etc/lambda"))


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("agents.yaml"), message
    return message


def with_agent_field(**fields: object) -> str:
    agent = {"id": "agent-0", "base_url": "http://a/", "workspace_path": "/w"}
    agent.update(fields)
    agent = {k: v for k, v in agent.items() if v is not ...}
    return yaml.safe_dump({"agents": [agent]})


def test_valid_config_loads_every_field() -> None:
    config = parse(VALID)
    assert [a.id for a in config.agents] == ["agent-0", "agent-1"]
    first, second = config.agents
    assert first.label == "Agent 0"
    assert first.base_url == "http://agents.internal:7000/agent_0/"
    assert first.workspace_path == Path("/agents/0")
    assert first.max_file_bytes == DEFAULT_MAX_FILE_BYTES
    assert second.max_file_bytes == 1000
    assert config.default_agent is None
    assert config.source == "agents.yaml"


def test_agent_for_maps_configured_users_and_refuses_others() -> None:
    config = parse(VALID)
    assert config.agent_for("@alice:example.org").id == "agent-0"
    assert config.agent_for("@bob:example.org").id == "agent-1"
    assert config.agent_for("@mallory:example.org") is None


def test_default_agent_serves_unknown_users() -> None:
    config = parse(VALID.replace("default_agent: null", "default_agent: agent-1"))
    assert config.agent_for("@mallory:example.org").id == "agent-1"
    assert config.agent_for("@alice:example.org").id == "agent-0"


def test_agent_lookup_by_id() -> None:
    config = parse(VALID)
    assert config.agent("agent-1").label == "Agent 1"
    with pytest.raises(KeyError):
        config.agent("agent-9")


def test_config_is_immutable() -> None:
    config = parse(VALID)
    with pytest.raises(AttributeError):
        config.default_agent = "agent-0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.user_agents["@eve:example.org"] = "agent-0"  # type: ignore[index]


def test_label_defaults_to_id_and_optional_sections_may_be_absent() -> None:
    config = parse(with_agent_field())
    assert config.agents[0].label == "agent-0"
    assert dict(config.user_agents) == {}
    assert config.default_agent is None


def test_empty_user_agents_section_means_no_users() -> None:
    config = parse("user_agents:\n" + with_agent_field())
    assert dict(config.user_agents) == {}


def test_relative_workspace_resolves_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "agents.yaml"
    path.parent.mkdir()
    path.write_text(with_agent_field(workspace_path="../work/0"))
    config = load_agents_config(path)
    assert config.agents[0].workspace_path == tmp_path / "work" / "0"
    assert config.source == str(path)


def test_shipped_example_config_is_valid_and_matches_the_demo() -> None:
    config = load_agents_config(REPO / "config" / "agents.yaml")
    assert [a.id for a in config.agents] == ["agent-0", "agent-1"]
    assert config.agent_for("@alice:localhost").id == "agent-0"
    assert config.agent_for("@bob:localhost").id == "agent-1"
    assert config.agent_for("@eve:localhost") is None
    assert config.agents[0].workspace_path == REPO / ".demo" / "agents" / "0"
    assert config.agents[1].base_url.startswith("http://127.0.0.1:")


# --- refusals: each names the file, the entry, the problem and the fix ---------


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found; pass the path"):
        load_agents_config(tmp_path / "nope.yaml")


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_agents_config(tmp_path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_bytes(b"agents: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_agents_config(path)


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n"])
def test_empty_file_is_refused(text: str) -> None:
    message = refused(text)
    assert "agents" in message


def test_yaml_syntax_error_names_the_line() -> None:
    message = refused("agents:\n  - id: a\n    base_url: [unclosed\n")
    assert "YAML syntax error" in message
    assert "line 4" in message or "line 3" in message


def test_duplicate_yaml_key_is_refused_with_line() -> None:
    message = refused(
        """\
        user_agents:
          "@alice:example.org": agent-0
          "@alice:example.org": agent-1
        agents: []
        """
    )
    assert "appears twice" in message and "line 3" in message


def test_top_level_not_a_mapping_is_refused() -> None:
    assert "top level must be a mapping" in refused("- a\n- b\n")


def test_missing_agents_is_refused() -> None:
    assert "top level: missing key 'agents'" in refused("default_agent: null\n")


def test_unknown_top_level_key_is_refused() -> None:
    message = refused("agent: []\n" + with_agent_field())
    assert "agents.yaml: agent: unknown key; allowed keys are" in message


@pytest.mark.parametrize("agents", ["[]", "{}", "3", "null"])
def test_agents_must_be_a_non_empty_list(agents: str) -> None:
    assert "agents: must be a non-empty list" in refused(f"agents: {agents}\n")


def test_agent_entry_must_be_a_mapping() -> None:
    assert "agents[0]: must be a mapping" in refused("agents: [agent-0]\n")


@pytest.mark.parametrize("missing", ["id", "base_url", "workspace_path"])
def test_missing_agent_field_is_refused(missing: str) -> None:
    message = refused(with_agent_field(**{missing: ...}))
    assert f"agents[0]: missing key '{missing}'; add it" in message


def test_extra_agent_field_is_refused() -> None:
    message = refused(with_agent_field(workspace="/w"))
    assert "agents[0].workspace: unknown key" in message


def test_duplicate_agent_ids_are_refused() -> None:
    text = yaml.safe_dump(
        {
            "agents": [
                {"id": "a", "base_url": "http://a/", "workspace_path": "/a"},
                {"id": "b", "base_url": "http://b/", "workspace_path": "/b"},
                {"id": "a", "base_url": "http://c/", "workspace_path": "/c"},
            ]
        }
    )
    message = refused(text)
    assert "agents[2].id: duplicate agent id 'a' (also agents[0])" in message


@pytest.mark.parametrize("bad_id", [7, "", "-x", "has space", "a" * 129, None, ["a"]])
def test_invalid_agent_id_is_refused(bad_id: object) -> None:
    assert "agents[0].id" in refused(with_agent_field(id=bad_id))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://agents/",
        "agents.internal:7000",
        "/agent_0/",
        "http:///nohost",
        "http://host:99999/",
        "http://user:pw@host/",
        "http://host/?q=1",
        "http://ho st/",
        12,
        None,
    ],
)
def test_bad_base_url_is_refused(url: object) -> None:
    message = refused(with_agent_field(base_url=url))
    assert "agents[0].base_url" in message
    assert "e.g. http://" in message


@pytest.mark.parametrize("url", ["http://a/", "https://a:8443/x/", "ws://127.0.0.1:7100/agent_0", "WSS://a"])
def test_good_base_urls_are_accepted(url: str) -> None:
    assert parse(with_agent_field(base_url=url)).agents[0].base_url == url


@pytest.mark.parametrize("path", ["", "  ", "~/agents/0", 5, None, "a\x00b"])
def test_bad_workspace_path_is_refused(path: object) -> None:
    assert "agents[0].workspace_path" in refused(with_agent_field(workspace_path=path))


@pytest.mark.parametrize("size", [0, -1, "big", 1.5, True])
def test_bad_max_file_bytes_is_refused(size: object) -> None:
    assert "agents[0].max_file_bytes: must be a positive whole number" in refused(with_agent_field(max_file_bytes=size))


def test_bad_label_is_refused() -> None:
    assert "agents[0].label" in refused(with_agent_field(label=["x"]))


def test_unknown_agent_in_user_agents_is_refused() -> None:
    message = refused('user_agents:\n  "@bob:x": agent-7\n' + with_agent_field())
    assert "user_agents.\"@bob:x\": 'agent-7' is not one of the agents ('agent-0')" in message


@pytest.mark.parametrize("user", ["bob", "@bob", "bob:x", "@:x", "@bo:b:", "@bob:x y", 42])
def test_invalid_matrix_user_id_is_refused(user: object) -> None:
    text = yaml.safe_dump({"user_agents": {user: "agent-0"}}) + with_agent_field()
    message = refused(text)
    assert "user_agents." in message and "is not a Matrix user id" in message


def test_user_agents_must_be_a_mapping() -> None:
    assert "user_agents: must be a mapping" in refused('user_agents: ["@a:x"]\n' + with_agent_field())


def test_user_agent_value_must_be_a_string() -> None:
    assert 'user_agents."@a:x": must name an agent id' in refused('user_agents: {"@a:x": [1]}\n' + with_agent_field())


def test_unknown_default_agent_is_refused() -> None:
    message = refused("default_agent: agent-3\n" + with_agent_field())
    assert "default_agent: 'agent-3' is not one of the agents" in message


def test_default_agent_of_wrong_type_is_refused() -> None:
    assert "default_agent: must be an agent id or null" in refused("default_agent: 3\n" + with_agent_field())


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("password: hunter2\n", "password"),
        ("access_token: syt_abc\n", "access_token"),
        ("matrix:\n  Access-Token: x\n", "matrix.\"Access-Token\""),
        ("agents:\n  - id: a\n    base_url: http://a/\n    workspace_path: /a\n    api_token: x\n", "agents[0].api_token"),
        ("agents:\n  - id: a\n    extra: [{secret: x}]\n", "agents[0].extra[0].secret"),
    ],
)
def test_secret_looking_keys_are_refused_anywhere(text: str, entry: str) -> None:
    message = refused(text)
    assert f"agents.yaml: {entry}: looks like a secret; secrets come from the environment" in message
    assert "hunter2" not in message and "syt_abc" not in message


def test_yaml_anchors_and_cycles_do_not_hang_or_crash() -> None:
    message = refused("a: &x [*x]\nagents: []\n")
    assert "unknown key" in message or "agents" in message


def test_invalid_timestamp_scalar_is_a_config_error() -> None:
    # PyYAML raises a plain ValueError for this one.
    assert "quote it" in refused("agents: 2001-13-45\n")


def test_deeply_nested_yaml_is_a_config_error() -> None:
    refused("agents: " + "[" * 5000 + "]" * 5000 + "\n")


@pytest.mark.parametrize(
    "user",
    ["@alice:example.org", "@a.b_c=d-e/f:matrix.org", "@x:localhost:8448", "@x:[::1]:8448", "@x:127.0.0.1"],
)
def test_matrix_user_id_grammar_accepts_real_ids(user: str) -> None:
    assert is_matrix_user_id(user)


# --- fuzzing: whatever the file holds, a config or one ConfigError ----------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=4),
    max_leaves=20,
)
agent_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["agent-0", "agent-1", "", 3]) | yaml_values,
        "label": st.text(max_size=10) | yaml_values,
        "base_url": st.sampled_from(["http://a/", "ws://b:1/x", "ftp://c", "http://"]) | yaml_values,
        "workspace_path": st.sampled_from(["/w", "rel/w", "", "~"]) | yaml_values,
        "max_file_bytes": st.integers() | yaml_values,
    },
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "agents": st.lists(agent_like, max_size=3) | yaml_values,
        "user_agents": st.dictionaries(
            st.sampled_from(["@alice:x", "@bob:y", "carol"]) | st.text(max_size=8),
            st.sampled_from(["agent-0", "agent-1", "agent-9"]) | yaml_values,
            max_size=3,
        )
        | yaml_values,
        "default_agent": st.sampled_from([None, "agent-0", "agent-9"]) | yaml_values,
    },
)


def _outcome(text: str) -> None:
    try:
        config = parse_agents_config(text, source="fuzz.yaml", base_dir=Path("/base"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
        return
    ids = {agent.id for agent in config.agents}
    assert len(ids) == len(config.agents)
    assert set(config.user_agents.values()) <= ids
    assert config.default_agent is None or config.default_agent in ids
    for agent in config.agents:
        assert agent.workspace_path.is_absolute()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_like)
def test_fuzz_any_structure_is_a_config_or_a_config_error(data: dict) -> None:
    _outcome(yaml.safe_dump(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_any_text_is_a_config_or_a_config_error(text: str) -> None:
    _outcome(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(VALID) + ["&a ", "*a", "!!binary ", "? ", "{", "}", "\t", "%YAML 1.1\n"]), max_size=120))
def test_fuzz_mutated_valid_config_is_a_config_or_a_config_error(pieces: list[str]) -> None:
    _outcome("".join(pieces))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_any_file_bytes_is_a_config_or_a_config_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "agents.yaml"
    path.write_bytes(data)
    try:
        load_agents_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


# --- the Matrix environment -----------------------------------------------------

BASE_ENV = {"MATRIX_HOMESERVER": "https://matrix.example.org/", "MATRIX_USER_ID": "@lambda:example.org"}


def test_env_with_access_token() -> None:
    settings_ = MatrixSettings.from_env({**BASE_ENV, "MATRIX_ACCESS_TOKEN": "syt_secret_value"})
    assert settings_.homeserver == "https://matrix.example.org"
    assert settings_.user_id == "@lambda:example.org"
    assert settings_.access_token is not None and settings_.access_token.reveal() == "syt_secret_value"
    assert settings_.password is None


def test_env_with_password() -> None:
    settings_ = MatrixSettings.from_env({**BASE_ENV, "MATRIX_PASSWORD": "hunter2"})
    assert settings_.password is not None and settings_.password.reveal() == "hunter2"
    assert settings_.access_token is None


def test_env_secret_from_file_drops_the_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("syt_from_file\n")
    settings_ = MatrixSettings.from_env({**BASE_ENV, "MATRIX_ACCESS_TOKEN_FILE": str(secret_file)})
    assert settings_.access_token.reveal() == "syt_from_file"
    secret_file.write_text("pw with spaces \n")
    settings_ = MatrixSettings.from_env({**BASE_ENV, "MATRIX_PASSWORD_FILE": str(secret_file)})
    assert settings_.password.reveal() == "pw with spaces "


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**BASE_ENV, "MATRIX_PASSWORD": "pw"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MATRIX_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("MATRIX_ACCESS_TOKEN_FILE", raising=False)
    monkeypatch.delenv("MATRIX_PASSWORD_FILE", raising=False)
    assert MatrixSettings.from_env().password.reveal() == "pw"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MATRIX_USER_ID": "@a:x", "MATRIX_PASSWORD": "p"}, "MATRIX_HOMESERVER: not set"),
        ({**BASE_ENV, "MATRIX_HOMESERVER": "matrix.example.org", "MATRIX_PASSWORD": "p"}, "MATRIX_HOMESERVER: 'matrix"),
        ({**BASE_ENV, "MATRIX_HOMESERVER": "ftp://x", "MATRIX_PASSWORD": "p"}, "MATRIX_HOMESERVER"),
        ({"MATRIX_HOMESERVER": "http://h", "MATRIX_PASSWORD": "p"}, "MATRIX_USER_ID: not set"),
        ({**BASE_ENV, "MATRIX_USER_ID": "lambda", "MATRIX_PASSWORD": "p"}, "MATRIX_USER_ID: 'lambda' is not"),
        (BASE_ENV, "MATRIX_ACCESS_TOKEN: not set; set MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD"),
        ({**BASE_ENV, "MATRIX_PASSWORD": ""}, "MATRIX_ACCESS_TOKEN: not set"),
        ({**BASE_ENV, "MATRIX_PASSWORD": "p", "MATRIX_ACCESS_TOKEN": "t"}, "both set; set only one"),
        ({**BASE_ENV, "MATRIX_PASSWORD": "p", "MATRIX_PASSWORD_FILE": "/x"}, "MATRIX_PASSWORD and MATRIX_PASSWORD_FILE"),
        ({**BASE_ENV, "MATRIX_ACCESS_TOKEN_FILE": "/nonexistent/token"}, "MATRIX_ACCESS_TOKEN_FILE: cannot read"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        MatrixSettings.from_env(env)
    assert variable in str(info.value)
    assert "hunter2" not in str(info.value)


def test_env_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ConfigError, match="MATRIX_PASSWORD_FILE: .* is empty"):
        MatrixSettings.from_env({**BASE_ENV, "MATRIX_PASSWORD_FILE": str(tmp_path / "pw")})


def test_settings_never_show_secrets(caplog: pytest.LogCaptureFixture) -> None:
    token = "syt_TOPSECRET_token_value"
    password = "hunter2-TOPSECRET"
    with_token = MatrixSettings.from_env({**BASE_ENV, "MATRIX_ACCESS_TOKEN": token})
    with_password = MatrixSettings.from_env({**BASE_ENV, "MATRIX_PASSWORD": password})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings %s %r %s", with_token, with_password, with_token.access_token)
    shown = " ".join(
        [
            repr(with_token),
            str(with_token),
            repr(with_password),
            str(with_password),
            f"{with_token.access_token}",
            repr(with_password.password),
            caplog.text,
        ]
    )
    assert "TOPSECRET" not in shown
    assert "***" in shown and "@lambda:example.org" in shown


def test_secret_compares_by_value_and_refuses_pickling() -> None:
    import pickle

    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))


# --- every mistake at once ----------------------------------------------------------


def test_every_mistake_is_reported_at_once_each_with_its_entry() -> None:
    text = """\
    user_agents:
      "@alice:example.org": agent-9
      bob: agent-0
    default_agent: 3
    agents:
      - id: agent-0
        base_url: "ftp://a/"
        workspace_path: "~/w"
        colour: blue
      - id: agent-0
        base_url: "http://b/"
        workspace_path: /b
      - base_url: "http://c/"
        workspace_path: /c
    limits:
      answer_parts: 0
      answer_filez: 3
    """
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = info.value.problems
    assert str(info.value) == "\n".join(problems)
    expected = [
        'user_agents."@alice:example.org": \'agent-9\' is not one of the agents',
        'user_agents."bob": is not a Matrix user id',
        "default_agent: must be an agent id or null",
        "agents[0].base_url: 'ftp://a/' must be an http",
        "agents[0].workspace_path: '~' is not expanded",
        "agents[0].colour: unknown key",
        "agents[1].id: duplicate agent id 'agent-0' (also agents[0])",
        "agents[2]: missing key 'id'; add it",
        "limits.answer_parts: must be a positive whole number, not 0; the default is 8",
        "limits.answer_filez: unknown key; allowed keys are 'answer_files', 'answer_parts'",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected)
    assert all(p.startswith("agents.yaml: ") for p in problems)


def test_an_agent_with_a_mistake_still_counts_for_user_agents() -> None:
    # Only the real mistake is reported, not a follow-on "unknown agent".
    problems = refused('user_agents:\n  "@a:x": agent-0\n' + with_agent_field(base_url="ftp://x/")).splitlines()
    assert len(problems) == 1 and "agents[0].base_url" in problems[0]


def test_every_secret_looking_key_is_reported_once() -> None:
    problems = refused("password: a\nagents:\n  - id: a\n    api_token: b\n").splitlines()
    assert [p.split(": ")[1] for p in problems if "looks like a secret" in p] == ["agents[0].api_token", "password"]
    assert not any("api_token: unknown key" in p or "password: unknown key" in p for p in problems)


@pytest.mark.parametrize(
    "text",
    ["user_agents:\n  @alice:example.org: agent-0\n", "default_agent: @alice\n", "user_agents: {@a:x: b}\n"],
)
def test_an_unquoted_matrix_id_is_a_syntax_error_that_says_to_quote_it(text: str) -> None:
    message = refused(text + with_agent_field())
    assert "YAML syntax error" in message and "line " in message
    assert 'a Matrix user id must be quoted, e.g. "@alice:example.org": agent-0' in message


def test_env_reports_every_mistake_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        MatrixSettings.from_env({"MATRIX_HOMESERVER": "matrix.example.org", "MATRIX_USER_ID": "lambda"})
    assert [p.split(":")[0] for p in info.value.problems] == ["MATRIX_HOMESERVER", "MATRIX_USER_ID", "MATRIX_ACCESS_TOKEN"]


def test_an_unreadable_secret_file_alone_is_an_unreadable_config(tmp_path: Path) -> None:
    from lambda_actors.bot.config import UnreadableConfig

    with pytest.raises(UnreadableConfig, match="MATRIX_PASSWORD_FILE: cannot read"):
        MatrixSettings.from_env({**BASE_ENV, "MATRIX_PASSWORD_FILE": str(tmp_path / "missing")})


def test_an_unreadable_config_file_is_an_unreadable_config(tmp_path: Path) -> None:
    from lambda_actors.bot.config import UnreadableConfig

    with pytest.raises(UnreadableConfig, match="file not found"):
        load_agents_config(tmp_path / "nope.yaml")
    with pytest.raises(UnreadableConfig, match="is a folder"):
        load_agents_config(tmp_path)


# --- limits ---------------------------------------------------------------------------


def test_limits_default_when_the_section_is_absent() -> None:
    from lambda_actors.bot.limits import Limits

    assert parse(with_agent_field()).limits == Limits()


def test_limits_section_sets_the_named_fields_only() -> None:
    from lambda_actors.bot.limits import Limits

    config = parse("limits:\n  answer_parts: 3\n  rooms_per_user_per_hour: 5\n" + with_agent_field())
    assert config.limits == Limits(answer_parts=3, rooms_per_user_per_hour=5)


@pytest.mark.parametrize("value", ["-1", "0", "1.5", "true", "lots", "null", "[1]"])
def test_a_limit_must_be_a_positive_whole_number(value: str) -> None:
    message = refused(f"limits:\n  answer_files: {value}\n" + with_agent_field())
    assert "limits.answer_files: must be a positive whole number" in message and "the default is 10" in message


@pytest.mark.parametrize("value", ["[]", "3", "yes"])
def test_limits_must_be_a_mapping(value: str) -> None:
    assert "limits: must be a mapping" in refused(f"limits: {value}\n" + with_agent_field())


def test_the_shipped_example_documents_every_limit_with_its_default() -> None:
    from dataclasses import fields

    from lambda_actors.bot.limits import Limits

    text = (REPO / "config" / "agents.yaml").read_text()
    documented = {}
    for line in text.split("# limits:")[1].splitlines()[1:]:
        key, _, rest = line.lstrip("# ").partition(":")
        documented[key] = int(rest.split("#")[0])
    assert documented == {f.name: getattr(Limits(), f.name) for f in fields(Limits)}
    # Uncommented, the section is valid as it stands.
    uncommented = text.replace("# limits:", "limits:").replace("#   ", "    ")
    assert parse_agents_config(uncommented, base_dir=REPO / "config").limits == Limits()
