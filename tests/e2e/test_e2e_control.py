"""The control socket of a running bot: list its actors, crash one on purpose,
the whole tree's statistics, when a parked agent is retried, dead letters."""

import os
import subprocess
import sys
import time
from datetime import datetime
from functools import partial

import trio

from harness.bot import TEST_SUPERVISION
from harness.chat import onboard

from lambda_actors.bot.actors.control import control_request
from lambda_actors.bot.actors.services import ERROR_KEY, SOURCE_KEY
from lambda_actors.loopback.stack import open_loopback_stack


async def test_control_socket_lists_actors_and_kills_a_connection(bot_stack, tmp_path):
    await bot_stack.stop_bot()
    socket_path = tmp_path / "control.sock"
    await bot_stack.start_bot(control_socket=socket_path)
    assert socket_path.stat().st_mode & 0o077 == 0  # only the bot's user may connect
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.say(chat1, "hello"))
    listed = await control_request(socket_path, "actors node/agents")
    paths = {a["path"]: a for a in listed["actors"]}
    assert paths["node/agents/agent-0"]["supervisor"] is True
    [connection] = [p for p in paths if p.startswith("node/agents/agent-0/chat-")]
    assert paths[connection]["status"] == "running" and paths[connection]["retry_at"] is None
    assert await control_request(socket_path, f"kill {connection}") == {"killed": True}
    # The killed connection is restarted and the next message is answered.
    assert "echo: after the kill" in (await alice.answer(await alice.say(chat1, "after the kill"))).text
    stats = (await control_request(socket_path, "stats"))["stats"]
    by_path = {s["path"]: s for s in stats["supervisors"]}
    assert by_path["node/agents/agent-0"]["restarts"] == 1  # counted where it happened ...
    assert stats["restarts"] >= 1  # ... and in the tree's total
    assert "error" in await control_request(socket_path, "kill node/nowhere")
    assert "unknown command" in (await control_request(socket_path, "frobnicate"))["error"]


def error_kinds(user, source: str) -> list[str]:
    """The error kinds of the bot's messages about ``source``."""
    return [s.content[ERROR_KEY] for s in user.seen if s.content.get(SOURCE_KEY) == source and ERROR_KEY in s.content]


async def test_a_bot_process_with_faults_reports_dead_letters_parks_and_retry_times(synapse, tmp_path):
    async with open_loopback_stack(tmp_path, agents=1, users=("alice",), homeserver=synapse) as stack:
        supervision = tmp_path / "supervision.toml"
        supervision.write_text(TEST_SUPERVISION)  # an agent that fails once is parked for 30 s
        socket_path = tmp_path / "control.sock"
        # The real command, with LAMBDA_ACTORS_FAULTS in its environment: the
        # fault reaches the rooms through run.py and run_bot.
        env = {
            **os.environ,
            "MATRIX_HOMESERVER": stack.homeserver.url,
            "MATRIX_USER_ID": stack.bot_user.user_id,
            "MATRIX_PASSWORD": stack.bot_user.password,
            "LAMBDA_ACTORS_FAULTS": "poison",
        }
        env.pop("MATRIX_ACCESS_TOKEN", None)
        command = [
            sys.executable, "-m", "lambda_actors", "run", "--config", str(stack.config_path), "--supervision",
            str(supervision), "--data-dir", str(tmp_path / "data"), "--control-socket", str(socket_path),
        ]
        with open(tmp_path / "bot.log", "wb") as log:
            async with trio.open_nursery() as nursery:
                start = partial(trio.run_process, command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
                process = await nursery.start(start)
                try:
                    await exercise(stack, socket_path)
                finally:
                    process.terminate()
                assert await process.wait() == 0
        assert "faults.injected" in (tmp_path / "bot.log").read_text()


async def exercise(stack, socket_path) -> None:
    alice = await stack.scripted_user("alice")
    _, chat1 = await onboard(stack, alice)

    poison = await alice.say(chat1, "this one crashes its room [[poison]]")
    await alice.answer(poison)
    assert "set_aside" in error_kinds(alice, poison)
    [letter] = (await control_request(socket_path, "deadletters"))["deadletters"]
    assert (letter["event_id"], letter["room_id"], letter["sender"]) == (poison, chat1, alice.user_id)
    assert letter["failures"] == 3 and letter["error"]

    killed_at = time.time()
    assert await control_request(socket_path, "kill node/agents/agent-0") == {"killed": True}
    # The room answers that the agent is unavailable once it is parked.
    asked = await alice.say(chat1, "anyone there?")
    await alice.answer(asked)
    assert error_kinds(alice, asked)
    listed = {a["path"]: a for a in (await control_request(socket_path, "actors node/agents"))["actors"]}
    parked = listed["node/agents/agent-0"]
    assert parked["status"] == "parked"
    retry_at = datetime.fromisoformat(parked["retry_at"]).timestamp()
    assert killed_at + 25 < retry_at < time.time() + 31  # cool_down = 30 s
    stats = (await control_request(socket_path, "stats"))["stats"]
    by_path = {s["path"]: s for s in stats["supervisors"]}
    assert by_path["node/agents"]["parked"] == 1 and by_path["node/agents"]["parks"] == 1
    assert by_path["node/rooms"]["restarts"] >= 2  # the poisoned room's crashes
    assert stats["parks"] >= 1
