"""The control socket of a running bot: list its actors, crash one on purpose."""

from harness.chat import onboard

from lambda_actors.bot.actors.control import control_request


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
    assert paths[connection]["status"] == "running"
    assert await control_request(socket_path, f"kill {connection}") == {"killed": True}
    # The killed connection is restarted and the next message is answered.
    assert "echo: after the kill" in (await alice.answer(await alice.say(chat1, "after the kill"))).text
    assert "error" in await control_request(socket_path, "kill node/nowhere")
    assert "unknown command" in (await control_request(socket_path, "frobnicate"))["error"]
