"""The fake agent seen through a bare trio-websocket client: the wire format
itself, the recording tests rely on, and the ways to ask for misbehaviour."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket

from lambda_actors.agent import protocol as p
from lambda_actors.agent.fake import FakeAgent, Received

HANG = 20

# The exact keys each agent frame may carry on the wire (SPEC 4).
WIRE_KEYS = {
    "STATUS": {"type", "status", "chat_id"},
    "AGENT_EVENT_TEXT_CHUNK": {"type", "text"},
    "AGENT_EVENT_TOOL_CALL_CHUNK": {"type", "tool_name", "args"},
    "AGENT_EVENT_TOOL_RESULT": {"type", "tool_name", "result"},
    "AGENT_EVENT_CUSTOM_UPDATE": {"type", "payload"},
    "AGENT_EVENT_SEND_FILE": {"type", "path"},
    "AGENT_EVENT_END": {"type", "tokens_used"},
    "ERROR": {"type", "message", "code"},
}


async def raw_answer(ws) -> list[dict]:
    """Decoded frames up to END or ERROR, answering any confirmation with yes."""
    frames = []
    with trio.fail_after(HANG):
        while True:
            frame = json.loads(await ws.get_message())
            frames.append(frame)
            payload = frame.get("payload", {})
            if payload.get("kind") == "confirm":
                await ws.send_message(
                    json.dumps({"type": "CONFIRM_RESPONSE", "request_id": payload["request_id"], "approved": True})
                )
            if frame["type"] in {"AGENT_EVENT_END", "ERROR"}:
                return frames


def user_message(text: str, attachments=()) -> str:
    return json.dumps({"type": "USER_MESSAGE", "text": text, "attachments": list(attachments)})


async def test_agent_fake_wire_status_first_then_every_frame_type_as_plain_json(fake_agent):
    agent = await fake_agent(prefix="/agent_9/")
    url = f"ws://127.0.0.1:{agent.port}/agent_9/v1/agent_ws/12/"
    async with trio_websocket.open_websocket_url(url) as ws:
        status = json.loads(await ws.get_message())
        assert status == {"type": "STATUS", "status": "ready", "chat_id": "12"}
        await ws.send_message(user_message("all [[progress]] [[confirm]] [[tool]] [[file]]"))
        frames = await raw_answer(ws)
        await ws.send_message(user_message("fail [[error]]"))
        frames += await raw_answer(ws)
    seen = {f["type"] for f in frames} | {"STATUS"}
    assert seen == set(WIRE_KEYS)
    for frame in frames:
        assert set(frame) <= WIRE_KEYS[frame["type"]], frame
    by_type = {f["type"]: f for f in frames}
    assert by_type["AGENT_EVENT_SEND_FILE"] == {"type": "AGENT_EVENT_SEND_FILE", "path": "outbox/report.txt"}
    assert isinstance(by_type["AGENT_EVENT_END"]["tokens_used"], int)
    payloads = [f["payload"] for f in frames if "payload" in f]
    assert any(c.get("kind") == "confirm" and {"action", "details", "request_id"} <= set(c) for c in payloads)
    assert any(c.get("kind") == "progress" for c in payloads)
    assert by_type["ERROR"] == {"type": "ERROR", "message": "the fake agent failed on purpose", "code": "fake_error"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agent_ws/12/",  # missing the prefix
        "/agent_9/v1/agent_ws/12",  # no trailing slash
        "/agent_9/v1/agent_ws/",  # no chat id
        "/agent_9/v1/other/12/",
        "/agent_9/v1/agent_ws/12/extra/",
    ],
)
async def test_agent_fake_wire_any_other_path_is_rejected_with_404(fake_agent, path):
    agent = await fake_agent(prefix="/agent_9")
    with pytest.raises(trio_websocket.ConnectionRejected) as caught:
        async with trio_websocket.open_websocket("127.0.0.1", agent.port, path, use_ssl=False):
            pass
    assert caught.value.status_code == 404
    assert agent.connections == {}


async def test_agent_fake_wire_a_second_socket_for_a_chat_is_refused_409_busy(fake_agent):
    agent = await fake_agent()
    async with trio_websocket.open_websocket_url(agent.socket_url(3)) as first:
        await first.get_message()
        with pytest.raises(trio_websocket.ConnectionRejected) as caught:
            async with trio_websocket.open_websocket_url(agent.socket_url(3)):
                pass
        assert caught.value.status_code == 409
        assert b"agent busy" in caught.value.body
    assert agent.refused["3"] == 1


async def test_agent_fake_wire_garbage_is_a_text_frame_that_is_not_json(fake_agent):
    agent = await fake_agent()
    async with trio_websocket.open_websocket_url(agent.socket_url(1)) as ws:
        await ws.get_message()
        await ws.send_message(user_message("x [[garbage]]"))
        messages = []
        with trio.fail_after(HANG):
            while not messages or '"AGENT_EVENT_END"' not in messages[-1]:
                messages.append(await ws.get_message())
    unreadable = []
    for message in messages:
        assert isinstance(message, str)
        try:
            json.loads(message)
        except ValueError:
            unreadable.append(message)
    assert len(unreadable) == 1


async def test_agent_fake_wire_no_status_sends_nothing_at_all(fake_agent):
    agent = await fake_agent()
    agent.misbehave("no-status", chat_id=4, times=1)
    async with trio_websocket.open_websocket_url(agent.socket_url(4)) as ws:
        await ws.send_message(user_message("anyone there?"))
        with trio.fail_after(HANG):
            await agent.wait_for_message(chat_id=4)
            await agent.kill(4)
            # Messages sent before a close are still delivered before the
            # ConnectionClosed, so this proves nothing at all was sent.
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
    # times=1: the next connection behaves.
    async with trio_websocket.open_websocket_url(agent.socket_url(4)) as ws:
        assert json.loads(await ws.get_message())["type"] == "STATUS"


async def test_agent_fake_wire_drop_cuts_tcp_and_crash_closes_with_1011(fake_agent):
    agent = await fake_agent()
    for token, code in [("[[drop]]", 1006), ("[[crash]]", 1011)]:
        async with trio_websocket.open_websocket_url(agent.socket_url(token.strip("[]"))) as ws:
            await ws.get_message()
            await ws.send_message(user_message(f"bye {token}"))
            with trio.fail_after(HANG):
                with pytest.raises(trio_websocket.ConnectionClosed) as caught:
                    while True:
                        await ws.get_message()
        assert caught.value.reason.code == code


async def test_agent_fake_wire_big_sends_one_frame_of_big_size(fake_agent):
    agent = await fake_agent(big_size=300_000)
    async with trio_websocket.open_websocket_url(agent.socket_url(1), max_message_size=1 << 20) as ws:
        await ws.get_message()
        await ws.send_message(user_message("[[big]]"))
        frames = await raw_answer(ws)
    sizes = [len(f["text"]) for f in frames if f["type"] == "AGENT_EVENT_TEXT_CHUNK"]
    assert 300_000 in sizes


async def test_agent_fake_wire_misbehaviour_per_chat_and_per_count(fake_agent):
    agent = await fake_agent()
    agent.misbehave("double-end", chat_id=1, times=1)

    async def ends_after(chat_id: int, text: str) -> int:
        async with trio_websocket.open_websocket_url(agent.socket_url(chat_id)) as ws:
            await ws.get_message()
            await ws.send_message(user_message(text))
            await ws.send_message(user_message("probe"))
            ends, text, frame = 0, "", {"type": ""}
            with trio.fail_after(HANG):
                # Read through the probe's answer; its own END is the last.
                while not (text.endswith("echo: probe") and frame["type"] == "AGENT_EVENT_END"):
                    frame = json.loads(await ws.get_message())
                    text += frame.get("text", "")
                    ends += frame["type"] == "AGENT_EVENT_END"
            return ends - 1

    assert await ends_after(2, "other chat") == 1
    assert await ends_after(1, "this chat") == 2
    assert await ends_after(1, "used up") == 1  # times=1 was spent


async def test_agent_fake_wire_process_wide_misbehaviour_applies_until_behave(fake_agent):
    agent = await fake_agent(misbehave=["tool"])

    async def first_type(chat_id: int) -> str:
        async with trio_websocket.open_websocket_url(agent.socket_url(chat_id)) as ws:
            await ws.get_message()
            await ws.send_message(user_message("x"))
            frames = await raw_answer(ws)
        return frames[0]["type"]

    assert await first_type(1) == "AGENT_EVENT_TOOL_CALL_CHUNK"
    assert await first_type(2) == "AGENT_EVENT_TOOL_CALL_CHUNK"
    agent.behave()
    assert await first_type(3) == "AGENT_EVENT_TEXT_CHUNK"


def test_agent_fake_wire_unknown_modes_are_refused_with_the_list(tmp_path):
    agent = FakeAgent(tmp_path)
    with pytest.raises(ValueError, match="known modes: no-status, drop"):
        agent.misbehave("explode")


async def test_agent_fake_wire_records_every_frame_per_chat_and_connection(fake_agent):
    agent = await fake_agent()
    for _ in range(2):
        async with trio_websocket.open_websocket_url(agent.socket_url(8)) as ws:
            await ws.get_message()
            await ws.send_message(user_message("hi"))
            await ws.send_message("not json")
            await raw_answer(ws)
    with trio.fail_after(HANG):
        await agent.wait_until(lambda: len(agent.received) == 4)
    assert [(r.chat_id, r.connection) for r in agent.received] == [("8", 1), ("8", 1), ("8", 2), ("8", 2)]
    assert agent.received[0] == Received("8", 1, p.UserMessage("hi", ()))
    assert isinstance(agent.received[1].frame, p.MalformedFrame)
    assert agent.received_messages(8) == ["hi", "hi"]
    assert agent.received_messages(9) == []
    assert agent.connections["8"] == 2


async def test_agent_fake_wire_wait_for_message_wakes_on_the_matching_message(fake_agent):
    agent = await fake_agent()
    found = []
    woken = trio.Event()

    async def waiter():
        found.append(await agent.wait_for_message(lambda m: "needle" in m.text, chat_id=5))
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        async with trio_websocket.open_websocket_url(agent.socket_url(5)) as ws:
            await ws.get_message()
            await ws.send_message(user_message("hay"))
            await ws.send_message(user_message("a needle", ["incoming/n.txt"]))
            with trio.fail_after(HANG):
                await woken.wait()
    assert found == [Received("5", 1, p.UserMessage("a needle", ("incoming/n.txt",)))]


async def test_agent_fake_wire_kill_closes_every_open_socket(fake_agent):
    agent = await fake_agent()
    async with trio_websocket.open_websocket_url(agent.socket_url(1)) as one, \
            trio_websocket.open_websocket_url(agent.socket_url(2)) as two:
        await one.get_message()
        await two.get_message()
        assert agent.open_chats == {"1", "2"}
        with trio.fail_after(HANG):
            await agent.kill(abrupt=True)
            for ws in (one, two):
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await ws.get_message()
    assert agent.open_chats == frozenset()
