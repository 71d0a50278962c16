"""``lambda-actors run`` as an operator meets it: exit statuses, messages, help, defaults.

Each exit status is checked by running the real command as a subprocess
(from a temporary folder, so nothing depends on the repository being the
current folder) and reading what it prints. Statuses that need a homeserver
saying no (3) or a clean stop of a running bot (0) are in
``tests/e2e/test_e2e_operator.py``.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import trio

import lambda_actors as la
from lambda_actors.bot.actors.control import answer
from lambda_actors.bot.actors.node import (
    SESSION_FILE,
    PathUnusable,
    _read_session,
    _Saved,
    _write_session,
    check_control_socket,
    prepare_data_dir,
)
from lambda_actors.bot.config import MatrixSettings, Secret
from lambda_actors.bot.run import parse_faults
from lambda_actors.bot.store import Store

AGENTS_YAML = """\
user_agents:
  "@alice:example.org": agent-0
agents:
  - id: agent-0
    base_url: "http://127.0.0.1:9/agent_0/"
    workspace_path: "work/0"
"""


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def operator(tmp_path: Path):
    """Runs ``python -m lambda_actors`` in a fresh folder with a clean environment."""
    (tmp_path / "agents.yaml").write_text(AGENTS_YAML)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "LAMBDA_ACTORS_"))}

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lambda_actors", *args],
            cwd=tmp_path,
            env={**base_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def matrix_env(port: int | None = None) -> dict[str, str]:
    return {
        "MATRIX_HOMESERVER": f"http://127.0.0.1:{port or closed_port()}",
        "MATRIX_USER_ID": "@lambda:example.org",
        "MATRIX_PASSWORD": "not-used-here",
    }


def assert_operator_message(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr, result.stderr
    final = [line for line in result.stderr.splitlines() if line.startswith("lambda-actors: ")]
    assert len(final) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- exit statuses -----------------------------------------------------------------


def test_without_config_it_exits_2_saying_how_to_give_one(operator) -> None:
    result = operator("run", env=matrix_env())
    assert_operator_message(result, 2, "no agents.yaml given: pass --config FILE or set LAMBDA_ACTORS_CONFIG")
    assert len(result.stderr.splitlines()) == 1


def test_lambda_actors_config_names_the_file(operator, tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text("agents: []\n")
    result = operator("run", env={**matrix_env(), "LAMBDA_ACTORS_CONFIG": str(tmp_path / "agents.yaml")})
    assert_operator_message(result, 2, f"{tmp_path / 'agents.yaml'}: agents: must be a non-empty list")


def test_every_configuration_mistake_of_every_source_at_once_exits_2(operator, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text('user_agents:\n  "@a:x": agent-9\nagents:\n  - id: agent-0\n    base_url: ftp://x/\n    workspace_path: /w\n')
    (tmp_path / "bad.toml").write_text("[node]\nintensity = -1\n")
    result = operator("run", "--config", "bad.yaml", "--supervision", "bad.toml", env={"MATRIX_USER_ID": "lambda"})
    assert_operator_message(
        result,
        2,
        "bad.yaml: agents[0].base_url",
        "bad.yaml: user_agents.\"@a:x\"",
        "bad.toml",
        "intensity",
        "MATRIX_HOMESERVER: not set",
        "MATRIX_USER_ID: 'lambda' is not a Matrix user id",
        "MATRIX_ACCESS_TOKEN: not set",
    )


def test_an_unreadable_config_file_exits_5(operator, tmp_path: Path) -> None:
    result = operator("run", "--config", "missing.yaml", env=matrix_env())
    assert_operator_message(result, 5, "missing.yaml: file not found; pass the path of your agents.yaml")
    (tmp_path / "agents.yaml").chmod(0)
    if os.access(tmp_path / "agents.yaml", os.R_OK):
        return  # running as root: every file is readable, the rest is shown above
    result = operator("run", "--config", "agents.yaml", env=matrix_env())
    assert_operator_message(result, 5, "agents.yaml: cannot be read", "check its permissions")


def test_an_unreadable_supervision_file_exits_5(operator) -> None:
    result = operator("run", "--config", "agents.yaml", "--supervision", "nope.toml", env=matrix_env())
    assert_operator_message(result, 5, "nope.toml: file not found", "leave --supervision out for the shipped policy")


def test_a_data_dir_that_is_a_file_exits_5(operator, tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    result = operator("run", "--config", "agents.yaml", "--data-dir", "state", env=matrix_env())
    assert_operator_message(result, 5, "--data-dir state: is a file, not a folder")


def test_a_control_socket_in_a_missing_folder_exits_5(operator, tmp_path: Path) -> None:
    result = operator("run", "--config", "agents.yaml", "--control-socket", "nowhere/bot.sock", env=matrix_env())
    assert_operator_message(result, 5, f"--control-socket nowhere/bot.sock: the folder {tmp_path / 'nowhere'} does not exist")


def test_a_control_socket_path_holding_a_file_exits_5_and_the_file_stays(operator, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = operator("run", "--config", "agents.yaml", "--control-socket", "precious.txt", env=matrix_env())
    assert_operator_message(result, 5, "something that is not a socket is already there")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_an_unreachable_homeserver_exits_4_after_bounded_retries_naming_the_url(operator) -> None:
    env = matrix_env()
    result = operator("run", "--config", "agents.yaml", "--homeserver-wait", "1.5", env=env)
    url = env["MATRIX_HOMESERVER"]
    assert_operator_message(result, 4, f"MATRIX_HOMESERVER {url}: no answer from the homeserver in 1.5 s")
    warnings = [line for line in result.stderr.splitlines() if "homeserver.unreachable" in line]
    assert len(warnings) >= 2 and all(f"url={url}" in line for line in warnings)


def test_a_web_server_that_is_not_a_homeserver_exits_4_at_once(operator) -> None:
    # A plain HTTP server answering 404 to everything.
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", "/nonexistent-folder"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(banner.split(" port ")[1].split()[0])
        result = operator("run", "--config", "agents.yaml", "--homeserver-wait", "600", env=matrix_env(port))
    finally:
        server.kill()
        server.wait()
    assert_operator_message(result, 4, "answered HTTP 404 without a Matrix client API", "homeserver's base URL")


def test_the_shipped_supervision_policy_is_used_from_any_folder(operator, tmp_path: Path) -> None:
    # No supervision.toml in this folder and no --supervision: the run gets
    # past every configuration check (to the homeserver, which is closed).
    assert not (tmp_path / "supervision.toml").exists()
    result = operator("run", "--config", "agents.yaml", "--homeserver-wait", "0", env=matrix_env())
    assert_operator_message(result, 4, "no answer from the homeserver")


# --- help, version, python -m --------------------------------------------------------


def test_version(operator) -> None:
    result = operator("--version")
    assert result.returncode == 0
    from importlib.metadata import version

    assert result.stdout.strip() == f"lambda-actors {version('lambda_actors')}"


def test_top_level_help_is_clean(operator) -> None:
    result = operator("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout
    for command in ("run", "fake-agent", "demo", "chaos"):
        assert f"\n    {command}" in result.stdout
    assert "--version" in result.stdout


def test_run_help_lists_the_environment_and_the_exit_statuses(operator) -> None:
    result = operator("run", "--help")
    assert result.returncode == 0
    text = result.stdout
    for variable in (
        "MATRIX_HOMESERVER",
        "MATRIX_USER_ID",
        "MATRIX_PASSWORD ",
        "MATRIX_ACCESS_TOKEN ",
        "MATRIX_PASSWORD_FILE",
        "MATRIX_ACCESS_TOKEN_FILE",
        "LAMBDA_ACTORS_CONFIG",
    ):
        assert f"\n  {variable}" in text, variable
    statuses = [line.split()[0] for line in text.split("exit status:")[1].splitlines() if line.strip()]
    assert statuses == ["0", "1", "2", "3", "4", "5"]
    assert "``" not in text


def test_the_console_script_and_python_m_are_the_same_command() -> None:
    script = Path(sys.executable).with_name("lambda-actors")
    by_script = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    by_module = subprocess.run([sys.executable, "-m", "lambda_actors", "--help"], capture_output=True, text=True)
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout


# --- pieces: faults, paths, the saved session -------------------------------------------


def test_faults_are_comma_separated_names() -> None:
    assert parse_faults("") == frozenset()
    assert parse_faults(" poison, ,flood ") == frozenset({"poison", "flood"})


def test_data_dir_is_created_0700(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path / "a" / "data")
    assert stat.S_IMODE((tmp_path / "a" / "data").stat().st_mode) == 0o700


def test_an_open_data_dir_gets_a_warning(tmp_path: Path) -> None:
    import structlog

    (tmp_path / "data").mkdir(mode=0o755)
    (tmp_path / "data").chmod(0o755)
    with structlog.testing.capture_logs() as logs:
        prepare_data_dir(tmp_path / "data")
    [warning] = [entry for entry in logs if entry["event"] == "data_dir.too_open"]
    assert warning["log_level"] == "warning" and "chmod 700" in warning["advice"]


def test_a_stale_control_socket_may_be_replaced(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(tmp_path / "c.sock"))
    check_control_socket(tmp_path / "c.sock")  # no complaint: it is a socket
    with pytest.raises(PathUnusable, match="longer than 107 bytes"):
        check_control_socket(tmp_path / ("x" * 120))


def test_the_saved_session_is_private_and_only_for_its_account(tmp_path: Path) -> None:
    settings = MatrixSettings("http://hs", "@bot:hs", password=Secret("pw"))
    path = tmp_path / SESSION_FILE
    _write_session(path, _Saved("http://hs", "@bot:hs", "DEV", "tok-123456"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _read_session(path, settings) == _Saved("http://hs", "@bot:hs", "DEV", "tok-123456")
    assert _read_session(path, MatrixSettings("http://hs", "@other:hs", password=Secret("pw"))) is None
    assert _read_session(path, MatrixSettings("http://elsewhere", "@bot:hs", password=Secret("pw"))) is None
    path.write_text("{not json")
    assert _read_session(path, settings) is None
    assert _read_session(tmp_path / "absent.json", settings) is None


# --- the control socket's answers, on a real tree ------------------------------------------


async def crash_on_demand(ctx: la.ActorContext) -> None:
    async for _ in ctx.mailbox:
        raise RuntimeError("asked to crash")


async def test_control_stats_cover_the_whole_tree_and_actors_say_when_a_parked_one_is_retried() -> None:
    children = [
        la.SupervisorSpec(
            "group",
            children=[la.ChildSpec("worker", crash_on_demand)],
            on_exhausted="park",
            intensity=0,
            period=60,
            cool_down=120,
        )
    ]
    async with la.open_supervisor("app", children) as sup:
        with sup.subscribe() as events:
            await sup.child_supervisor("group").address("worker").send("crash")
            await events.wait_for(la.Parked, path="app/group/worker")
        before = time.time()
        listed = answer(sup, "actors app/group/")["actors"]
        [worker] = [a for a in listed if a["path"] == "app/group/worker"]
        assert worker["status"] == "parked"
        retry_at = datetime.fromisoformat(worker["retry_at"]).timestamp()
        assert before + 110 < retry_at < time.time() + 121
        stats = answer(sup, "stats")["stats"]
        assert stats["parks"] == 1
        by_path = {s["path"]: s for s in stats["supervisors"]}
        assert set(by_path) == {"app", "app/group"}
        assert by_path["app/group"]["parked"] == 1 and by_path["app/group"]["parks"] == 1
        assert answer(sup, "actors app")["actors"][0]["retry_at"] is None  # running: no retry
        assert "unknown command 'frobnicate'" in answer(sup, "frobnicate")["error"]
        assert "deadletters" in answer(sup, "help")["error"]


async def test_control_deadletters_lists_what_was_set_aside(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "bot.sqlite3")
    try:
        async with la.open_supervisor("app", []) as sup:
            assert answer(sup, "deadletters", store) == {"deadletters": []}
            event = {"event_id": "$p", "sender": "@u:x", "type": "m.room.message", "content": {"body": "boom"}}
            store.ingest([("$p", "!r:x", event, False)], "batch-1")
            store.record_failure("$p", "!r:x", "ValueError: boom", "Traceback ...")
            store.set_aside("$p")
            [letter] = answer(sup, "deadletters 5", store)["deadletters"]
            assert {k: letter[k] for k in ("event_id", "room_id", "sender", "error", "failures")} == {
                "event_id": "$p", "room_id": "!r:x", "sender": "@u:x", "error": "ValueError: boom", "failures": 1,
            }
            assert "trace" not in letter and letter["set_aside_at"].endswith("+00:00")
            assert "needs the bot's store" in answer(sup, "deadletters")["error"]
            assert "from 1 to 100" in answer(sup, "deadletters 0", store)["error"]
    finally:
        store.close()


def test_without_the_bot_extra_run_says_what_to_install(tmp_path: Path) -> None:
    # A module named like a dependency of the bot extra that fails to import
    # stands in for an installation without it.
    (tmp_path / "nio").mkdir()
    (tmp_path / "nio" / "__init__.py").write_text("raise ModuleNotFoundError('no nio here', name='nio')\n")
    (tmp_path / "yaml.py").write_text("raise ModuleNotFoundError('no yaml here', name='yaml')\n")
    result = subprocess.run(
        [sys.executable, "-m", "lambda_actors", "run", "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("install them with: pip install 'lambda_actors[bot]'")
    assert "Traceback" not in result.stderr


# --- lambda-actors control ------------------------------------------------------------------


async def test_lambda_actors_control_asks_a_live_socket_and_prints_its_answer(tmp_path: Path) -> None:
    from lambda_actors.bot.actors.control import serve_control

    path = tmp_path / "c.sock"
    async with la.open_supervisor("app", [la.ChildSpec("worker", crash_on_demand)]) as sup:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, path, sup)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            listed = await trio.run_process(
                [sys.executable, "-m", "lambda_actors", "control", str(path), "actors"], capture_stdout=True, capture_stderr=True
            )
            assert '"path": "app/worker"' in listed.stdout.decode()
            refused = await trio.run_process(
                [sys.executable, "-m", "lambda_actors", "control", str(path), "kill"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            assert refused.returncode == 1 and "kill needs a path" in refused.stdout.decode()
            nursery.cancel_scope.cancel()
    assert not path.exists()  # removed when the bot stops


def test_lambda_actors_control_without_a_bot_exits_5(operator, tmp_path: Path) -> None:
    result = operator("control", str(tmp_path / "none.sock"), "stats")
    assert result.returncode == 5 and "is the bot running with --control-socket" in result.stderr
    assert "Traceback" not in result.stderr
