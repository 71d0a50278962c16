"""The operator's edges against a real Synapse: refused credentials, one token
across restarts, and a clean stop that exits 0 without an exception in the log.

The bot runs as the real ``lambda-actors run`` process where the exit status
or its output is the point; restarts for the token count run in-process
(each a full start and orderly stop of the tree).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from importlib import resources
from pathlib import Path

import trio
from harness.chat import onboard

from lambda_actors.bot.actors.node import DEVICE_ID, SESSION_FILE
from lambda_actors.loopback.stack import open_loopback_stack
from lambda_actors.matrix.client import MatrixClient

AGENTS_YAML = """\
agents:
  - id: agent-0
    base_url: "http://127.0.0.1:9/agent_0/"
    workspace_path: "work/0"
"""


async def run_cli(tmp_path: Path, env: dict[str, str]) -> trio.CompletedProcess:
    (tmp_path / "agents.yaml").write_text(AGENTS_YAML)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "LAMBDA_ACTORS_"))}
    with trio.fail_after(120):
        return await trio.run_process(
            [sys.executable, "-m", "lambda_actors", "run", "--config", "agents.yaml", "--data-dir", "data"],
            cwd=tmp_path,
            env={**clean, **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def operator_lines(result: trio.CompletedProcess) -> list[str]:
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("lambda-actors: ")]


async def test_a_wrong_password_exits_3_with_one_line(synapse, matrix_user, tmp_path):
    bot = matrix_user("lambda")
    result = await run_cli(
        tmp_path, {"MATRIX_HOMESERVER": synapse.url, "MATRIX_USER_ID": bot.user_id, "MATRIX_PASSWORD": "wrong-password"}
    )
    assert result.returncode == 3
    [line] = operator_lines(result)
    assert f"the homeserver refused the login of MATRIX_USER_ID {bot.user_id} (M_FORBIDDEN" in line
    assert "check MATRIX_PASSWORD" in line
    assert "wrong-password" not in result.stderr.decode()


async def test_a_bogus_access_token_exits_3_with_one_line(synapse, matrix_user, tmp_path):
    bot = matrix_user("lambda")
    token = "syt_bogus_token_0123456789"
    result = await run_cli(
        tmp_path, {"MATRIX_HOMESERVER": synapse.url, "MATRIX_USER_ID": bot.user_id, "MATRIX_ACCESS_TOKEN": token}
    )
    assert result.returncode == 3
    [line] = operator_lines(result)
    assert "does not accept MATRIX_ACCESS_TOKEN (M_UNKNOWN_TOKEN)" in line and "give a valid MATRIX_ACCESS_TOKEN" in line
    assert token not in result.stderr.decode()


async def test_a_token_of_another_account_exits_3(synapse, matrix_user, tmp_path):
    bot, other = matrix_user("lambda"), matrix_user("other")
    result = await run_cli(
        tmp_path,
        {"MATRIX_HOMESERVER": synapse.url, "MATRIX_USER_ID": bot.user_id, "MATRIX_ACCESS_TOKEN": other.access_token},
    )
    assert result.returncode == 3
    [line] = operator_lines(result)
    assert f"belongs to {other.user_id}, not to MATRIX_USER_ID {bot.user_id}" in line


def device_tokens(stack) -> list[str]:
    database = stack.homeserver.directory / "homeserver.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT token FROM access_tokens WHERE user_id = ? AND device_id = ?", (stack.bot_id, DEVICE_ID)
        ).fetchall()
    return [token for (token,) in rows]


async def test_ten_starts_leave_one_valid_token_and_a_refused_one_is_replaced(bot_stack):
    # bot_stack started the bot once; nine more starts, each a full start and stop.
    for _ in range(9):
        await bot_stack.stop_bot()
        await bot_stack.start_bot()
    [token] = device_tokens(bot_stack)
    session = bot_stack.data_dir / SESSION_FILE
    assert json.loads(session.read_text())["access_token"] == token
    assert session.stat().st_mode & 0o777 == 0o600

    # Someone logs the bot's session out: the next start logs in again and
    # saves the new token; still one.
    await bot_stack.stop_bot()
    async with MatrixClient(bot_stack.homeserver.url, access_token=token) as client:
        await client.logout()
    await bot_stack.start_bot()
    [new_token] = device_tokens(bot_stack)
    assert new_token != token
    assert json.loads(session.read_text())["access_token"] == new_token
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    assert "echo: still here" in (await alice.answer(await alice.say(chat1, "still here"))).text


async def test_sigterm_during_an_answer_exits_0_and_logs_no_exception(synapse, tmp_path):
    async with open_loopback_stack(
        tmp_path, agents=1, users=("alice",), homeserver=synapse, agent_options={"stall_seconds": 3600}
    ) as stack:
        shipped = resources.files("lambda_actors.bot").joinpath("supervision.toml")
        log_path = tmp_path / "bot.log"
        stack.start_bot_process(Path(str(shipped)), log_path)
        alice = await stack.scripted_user("alice")
        _, chat1 = await onboard(stack, alice)
        asked = await alice.say(chat1, "a long one [[stall]]")
        # The agent has the message and is mid-answer (it stalls after its first part).
        await stack.agents[0].wait_for_message(lambda m: "a long one" in m.text)
        assert await stack.terminate_bot_process() == 0
        answer = await alice.answer(asked)
        log = log_path.read_text()
    assert "interrupted" in answer.text
    assert "bot.stopped" in log
    assert "ExceptionGroup" not in log and "Traceback" not in log, log
