"""client.py against the real fake agent over loopback: every frame, every fault."""

from __future__ import annotations

import functools
import json

import pytest
import trio
import trio.testing

from lambda_actors.agent import protocol as p
from lambda_actors.agent.client import (
    AgentBusy,
    AgentClosed,
    AgentDropped,
    AgentStalled,
    AgentUnreachable,
    FrameTooLarge,
    Late,
    NoStatus,
    TooManyFrames,
    open_agent_connection,
)

# Generous guard against a hang; never what a test asserts.
HANG = 20


async def collect_answer(conn) -> list:
    """Frames up to and including the END (or ERROR) of the oldest open answer."""
    frames = []
    with trio.fail_after(HANG):
        while True:
            frame = await conn.receive()
            frames.append(frame)
            if isinstance(frame, (p.End, p.AgentError)):
                return frames


def text_of(frames) -> str:
    return "".join(f.text for f in frames if isinstance(f, p.TextChunk))


# --- the normal conversation ----------------------------------------------------


async def test_agent_client_gets_status_then_a_streamed_echo_ending_with_end(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 7) as conn:
        assert conn.status == p.Status(state="ready", chat_id="7")
        await conn.send_user_message("hello there")
        assert conn.answers_pending == 1
        frames = await collect_answer(conn)
    chunks = [f for f in frames if isinstance(f, p.TextChunk)]
    assert len(chunks) > 1  # streamed, not one block
    assert text_of(frames) == "echo: hello there"
    assert frames[-1] == p.End(tokens_used=len("echo: hello there"))
    assert conn.answers_pending == 0
    assert agent.received_messages(7) == ["hello there"]


async def test_agent_client_messages_on_one_socket_are_answered_in_order(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        for n in range(3):
            await conn.send_user_message(f"message {n}")
        answers = [text_of(await collect_answer(conn)) for _ in range(3)]
    assert answers == ["echo: message 0", "echo: message 1", "echo: message 2"]
    assert agent.received_messages(1) == ["message 0", "message 1", "message 2"]


async def test_agent_client_sees_a_tool_call_and_its_result(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("look around [[tool]]")
        frames = await collect_answer(conn)
    assert frames[0] == p.ToolCallChunk(tool_name="list_workspace", args='{"path": "."}')
    assert isinstance(frames[1], p.ToolResult) and frames[1].tool_name == "list_workspace"
    assert text_of(frames) == "echo: look around"


async def test_agent_client_sees_a_progress_update_without_a_confirmation(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("work [[progress]]")
        frames = await collect_answer(conn)
    updates = [f for f in frames if isinstance(f, p.CustomUpdate)]
    assert len(updates) == 1
    assert updates[0].payload["kind"] == "progress" and updates[0].confirm is None


@pytest.mark.parametrize("approved", [True, False])
async def test_agent_client_answers_a_confirmation_and_the_agent_acts_on_it(fake_agent, approved):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 5) as conn:
        await conn.send_user_message("tidy up [[confirm]]")
        with trio.fail_after(HANG):
            ask = await conn.receive()
        assert isinstance(ask, p.CustomUpdate) and ask.confirm is not None
        assert ask.confirm.action == "delete_file"
        assert conn.confirmations_pending == {ask.confirm.request_id}
        await conn.send_confirm_response(ask.confirm.request_id, approved)
        assert conn.confirmations_pending == frozenset()
        frames = await collect_answer(conn)
    word = "approved" if approved else "denied"
    assert text_of(frames).endswith(f"confirmation {ask.confirm.request_id}: {word}")
    assert p.ConfirmResponse(ask.confirm.request_id, approved) in agent.received_frames(5)


async def test_agent_client_receives_a_file_the_agent_wrote_in_its_workspace(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 3) as conn:
        await conn.send_user_message("send it [[file:summary.txt]]")
        frames = await collect_answer(conn)
    sent = [f for f in frames if isinstance(f, p.SendFile)]
    assert sent == [p.SendFile(path="outbox/summary.txt")]
    written = agent.workspace / "outbox" / "summary.txt"
    assert written.read_text().startswith("report for chat 3")


async def test_agent_client_attachments_are_checked_in_the_agents_workspace(fake_agent):
    agent = await fake_agent()
    (agent.workspace / "incoming").mkdir()
    (agent.workspace / "incoming" / "a.txt").write_bytes(b"12345")
    async with open_agent_connection(agent.base_url, 3) as conn:
        await conn.send_user_message("see files", ["incoming/a.txt", "incoming/nope.txt", "../escape.txt"])
        answer = text_of(await collect_answer(conn))
    assert answer.splitlines() == [
        "echo: see files",
        "attachment incoming/a.txt: 5 bytes",
        "attachment incoming/nope.txt: missing",
        "attachment ../escape.txt: outside the workspace",
    ]
    assert agent.received_frames(3) == [p.UserMessage("see files", ("incoming/a.txt", "incoming/nope.txt", "../escape.txt"))]


async def test_agent_client_an_error_frame_ends_the_answer(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 3) as conn:
        await conn.send_user_message("fail [[error]]")
        frames = await collect_answer(conn)
        assert conn.answers_pending == 0
    assert frames == [p.AgentError(message="the fake agent failed on purpose", code="fake_error")]


# --- misbehaviour: tolerated ----------------------------------------------------------


async def test_agent_client_invalid_json_mid_answer_is_a_malformed_frame_and_the_answer_goes_on(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[garbage]]")
        frames = await collect_answer(conn)
    malformed = [f for f in frames if isinstance(f, p.MalformedFrame)]
    assert len(malformed) == 1 and "not valid JSON" in malformed[0].reason
    assert text_of(frames) == "echo: hi"


async def test_agent_client_unknown_frame_type_is_returned_as_unknown_and_the_answer_goes_on(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[unknown]]")
        frames = await collect_answer(conn)
    assert [f.type for f in frames if isinstance(f, p.UnknownFrame)] == ["AGENT_EVENT_FAKE_NOVELTY"]
    assert text_of(frames) == "echo: hi"


async def test_agent_client_a_duplicated_end_comes_back_late_not_as_the_next_answer(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[double-end]]")
        first = await collect_answer(conn)
        with trio.fail_after(HANG):
            extra = await conn.receive()
        assert extra == Late(first[-1])
        await conn.send_user_message("next")
        assert text_of(await collect_answer(conn)) == "echo: next"


async def test_agent_client_frames_after_end_come_back_late(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[after-end]]")
        assert text_of(await collect_answer(conn)) == "echo: hi"
        with trio.fail_after(HANG):
            late = [await conn.receive(), await conn.receive()]
    assert late[0] == Late(p.TextChunk(" (late)"))
    assert isinstance(late[1], Late) and isinstance(late[1].frame, p.CustomUpdate)


async def test_agent_client_abort_cuts_a_flooding_agent_at_once_and_keeps_failing(fake_agent):
    """The fake's ``flood`` sends without pause after END until the socket
    closes; ``abort`` closes it at once, with no handshake to wait for."""
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 4) as conn:
        await conn.send_user_message("hi [[flood]]")
        assert text_of(await collect_answer(conn)) == "echo: hi"
        with trio.fail_after(HANG):
            for _ in range(100):
                assert await conn.receive() == Late(p.TextChunk(" (flood)"))
        error = TooManyFrames(conn.url, "over budget")
        await conn.abort(error)
        with pytest.raises(TooManyFrames):
            await conn.receive()
        with trio.fail_after(HANG):
            await agent.wait_until(lambda: "4" not in agent.open_chats)
    assert agent.flooded["4"] >= 100


async def test_agent_client_passes_on_a_send_file_path_that_escapes_the_workspace(fake_agent):
    # Refusing it is the bot's job (SPEC 6); the client reports it faithfully.
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[escape]]")
        frames = await collect_answer(conn)
    (sent,) = [f for f in frames if isinstance(f, p.SendFile)]
    assert sent.path.startswith("../")


async def test_agent_client_a_missing_first_chunk_after_a_tool_step_still_ends(fake_agent):
    agent = await fake_agent(chunks=3)
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("abcdefghijkl [[lost-chunk]]")
        frames = await collect_answer(conn)
    full = "echo: abcdefghijkl"
    first_piece = full[: -(-len(full) // 3)]
    assert isinstance(frames[0], p.ToolCallChunk)
    assert text_of(frames) == full[len(first_piece):]
    assert frames[-1] == p.End(tokens_used=len(full))


# --- misbehaviour: fatal to the connection, each with its own exception ------------


async def test_agent_client_a_socket_dropped_mid_answer_raises_agent_dropped(fake_agent):
    agent = await fake_agent()
    got = []
    with pytest.raises(AgentDropped) as caught:
        async with open_agent_connection(agent.base_url, 1) as conn:
            await conn.send_user_message("hi [[drop]]")
            with trio.fail_after(HANG):
                while True:
                    got.append(await conn.receive())
    assert caught.value.code == 1006
    assert len(got) == 1 and isinstance(got[0], p.TextChunk)
    assert "middle of an answer" in str(caught.value)


async def test_agent_client_an_agent_crash_raises_agent_dropped_with_its_close_code(fake_agent):
    agent = await fake_agent()
    with pytest.raises(AgentDropped) as caught:
        async with open_agent_connection(agent.base_url, 1) as conn:
            await conn.send_user_message("hi [[crash]]")
            await collect_answer(conn)
    assert (caught.value.code, caught.value.reason) == (1011, "fake agent crashed")


async def test_agent_client_a_socket_closed_between_answers_is_closed_not_dropped(fake_agent):
    agent = await fake_agent()
    with pytest.raises(AgentClosed) as caught:
        async with open_agent_connection(agent.base_url, 1) as conn:
            await conn.send_user_message("hi")
            await collect_answer(conn)
            await agent.kill(1)
            with trio.fail_after(HANG):
                await conn.receive()
    assert type(caught.value) is AgentClosed
    assert caught.value.code == 1011


async def test_agent_client_a_stall_mid_answer_raises_agent_stalled(fake_agent):
    agent = await fake_agent(stall_seconds=3600)
    got = []
    with pytest.raises(AgentStalled, match="sent nothing for 0.3 s"):
        async with open_agent_connection(agent.base_url, 1, idle_timeout=0.3) as conn:
            await conn.send_user_message("hi [[stall]]")
            with trio.fail_after(HANG):
                while True:
                    got.append(await conn.receive())
    # The first chunk came, then nothing: the stall was real, not a slow answer.
    assert len(got) == 1 and isinstance(got[0], p.TextChunk)


async def test_agent_client_a_pending_confirmation_pauses_the_stall_watchdog(fake_agent, mock_clock):
    # The clock stands still unless jumped, so the jump is the only passing
    # of time: far past idle_timeout while the agent waits for the user.
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1, idle_timeout=5) as conn:
        await conn.send_user_message("go [[confirm]]")
        ask = await conn.receive()
        assert ask.confirm is not None
        result = []

        async def receive_next():
            result.append(await conn.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_next)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1000)
            await trio.testing.wait_all_tasks_blocked()
            await conn.send_confirm_response(ask.confirm.request_id, True)
        assert isinstance(result[0], p.TextChunk)


async def test_agent_client_without_a_pending_confirmation_the_same_silence_is_a_stall(fake_agent, mock_clock):
    # The control for the test above: same jump, no confirmation, a stall.
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1, idle_timeout=5) as conn:
        await conn.send_user_message("go [[stall]]")
        assert isinstance(await conn.receive(), p.TextChunk)
        mock_clock.jump(1000)
        with pytest.raises(AgentStalled):
            await conn.receive()


async def test_agent_client_an_oversized_frame_raises_frame_too_large_and_closes(fake_agent):
    agent = await fake_agent(big_size=50_000)
    with pytest.raises(FrameTooLarge, match="40000-character limit"):
        async with open_agent_connection(agent.base_url, 1, max_frame_size=40_000) as conn:
            await conn.send_user_message("hi [[big]]")
            await collect_answer(conn)
    with trio.fail_after(HANG):
        await agent.wait_until(lambda: "1" not in agent.open_chats)


async def test_agent_client_accepts_the_same_frame_under_a_larger_limit(fake_agent):
    agent = await fake_agent(big_size=50_000)
    async with open_agent_connection(agent.base_url, 1, max_frame_size=60_000) as conn:
        await conn.send_user_message("hi [[big]]")
        frames = await collect_answer(conn)
    assert p.TextChunk("x" * 50_000) in frames


async def test_agent_client_no_status_raises_no_status_and_sends_nothing_first(fake_agent):
    agent = await fake_agent(misbehave=["no-status"])
    with pytest.raises(NoStatus, match="no STATUS within 0.3 s"):
        async with open_agent_connection(agent.base_url, 1, status_timeout=0.3):
            pytest.fail("entered without STATUS")
    assert agent.connections["1"] == 1
    with trio.fail_after(HANG):
        await agent.wait_until(lambda: "1" not in agent.open_chats)
    assert agent.received_frames(1) == []


# --- connecting ------------------------------------------------------------------------


async def test_agent_client_a_second_socket_for_a_held_chat_is_refused_busy(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 4):
        with pytest.raises(AgentBusy) as caught:
            async with open_agent_connection(agent.base_url, 4):
                pass
        assert caught.value.status_code == 409
        # Another chat of the same agent is not affected.
        async with open_agent_connection(agent.base_url, 5) as other:
            await other.send_user_message("x")
            assert text_of(await collect_answer(other)) == "echo: x"
    # Once the first socket is closed, the chat can be taken again at once.
    async with open_agent_connection(agent.base_url, 4) as again:
        await again.send_user_message("y")
        assert text_of(await collect_answer(again)) == "echo: y"
    assert agent.connections["4"] == 2 and agent.refused["4"] == 1


async def test_agent_client_a_wrong_prefix_is_unreachable_with_http_404(fake_agent):
    agent = await fake_agent(prefix="/agent_0/")
    wrong = agent.base_url.replace("/agent_0/", "/agent_1/")
    with pytest.raises(AgentUnreachable, match="HTTP 404") as caught:
        async with open_agent_connection(wrong, 1):
            pass
    assert caught.value.status_code == 404
    async with open_agent_connection(agent.base_url, 1) as conn:
        assert conn.url.endswith("/agent_0/v1/agent_ws/1/")


async def test_agent_client_a_closed_port_is_unreachable():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with pytest.raises(AgentUnreachable, match="cannot connect"):
        async with open_agent_connection(f"http://127.0.0.1:{port}/", 1):
            pass


async def test_agent_client_a_server_that_never_upgrades_is_unreachable():
    async def silent(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with pytest.raises(AgentUnreachable, match="upgrade did not complete"):
            async with open_agent_connection(f"http://127.0.0.1:{port}/", 1, connect_timeout=0.3):
                pass
        nursery.cancel_scope.cancel()


def test_agent_client_credentials_in_base_url_never_reach_error_messages():
    async def main():
        with pytest.raises(AgentUnreachable) as caught:
            async with open_agent_connection("http://user:s3cret@127.0.0.1:1/", 1, connect_timeout=2):
                pass
        return caught.value

    error = trio.run(main)
    assert "s3cret" not in str(error) and "s3cret" not in error.url
    assert "***@127.0.0.1:1" in str(error)


# --- the connection never leaks and only raises its own errors ------------------------------


async def test_agent_client_the_callers_exception_comes_out_unwrapped_and_the_socket_closes(fake_agent):
    agent = await fake_agent()
    with pytest.raises(KeyError, match="mine"):
        async with open_agent_connection(agent.base_url, 1):
            raise KeyError("mine")
    with trio.fail_after(HANG):
        await agent.wait_until(lambda: "1" not in agent.open_chats)


async def test_agent_client_cancelling_the_block_closes_the_socket(fake_agent):
    agent = await fake_agent(stall_seconds=3600)
    with trio.CancelScope() as scope:
        async with open_agent_connection(agent.base_url, 1) as conn:
            await conn.send_user_message("hi [[stall]]")
            await conn.receive()
            scope.cancel()
            await conn.receive()
    assert scope.cancelled_caught
    with trio.fail_after(HANG):
        await agent.wait_until(lambda: "1" not in agent.open_chats)


async def test_agent_client_a_cancelled_receive_loses_no_frame(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hello")
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.receive()
        assert text_of(await collect_answer(conn)) == "echo: hello"


async def test_agent_client_a_closed_connection_refuses_further_use(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await conn.send_user_message("late")
    with pytest.raises(trio.ClosedResourceError):
        await conn.receive()


async def test_agent_client_two_tasks_cannot_receive_at_once(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await conn.receive()
            nursery.cancel_scope.cancel()


async def test_agent_client_after_a_failure_the_connection_keeps_raising_it(fake_agent):
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 1) as conn:
        await conn.send_user_message("hi [[crash]]")
        with pytest.raises(AgentDropped) as first:
            await collect_answer(conn)
        with pytest.raises(AgentDropped) as second:
            await conn.send_user_message("again")
    assert second.value is first.value


async def test_agent_client_frames_are_exactly_the_json_the_spec_names(fake_agent):
    # What the client sends, as the agent's side decodes it off the wire.
    agent = await fake_agent()
    async with open_agent_connection(agent.base_url, 2) as conn:
        await conn.send_user_message("hi [[confirm]]", ["incoming/x.pdf"])
        ask = await conn.receive()
        await conn.send_confirm_response(ask.confirm.request_id, False)
        await collect_answer(conn)
    assert agent.received_frames(2) == [
        p.UserMessage("hi [[confirm]]", ("incoming/x.pdf",)),
        p.ConfirmResponse(ask.confirm.request_id, False),
    ]
    assert json.loads(p.user_message("hi", ["a"])).keys() == {"type", "text", "attachments"}


# --- timing misbehaviours, on a clock that only moves when the test says so ------------


async def next_frame_after(conn, clock, seconds: float) -> list:
    """Frames that arrive while the clock is moved forward by ``seconds``."""
    got = []

    async def receive_one():
        got.append(await conn.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_one)
        await trio.testing.wait_all_tasks_blocked()
        before = list(got)
        clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return [before, got]


async def test_agent_client_slow_chunks_come_one_interval_apart(fake_agent, mock_clock):
    agent = await fake_agent(slow_interval=2.0)
    async with open_agent_connection(agent.base_url, 1, idle_timeout=60) as conn:
        await conn.send_user_message("tell me slowly [[slow]]")
        first = await conn.receive()
        assert isinstance(first, p.TextChunk)
        before, after = await next_frame_after(conn, mock_clock, 2.0)
        assert before == [] and len(after) == 1 and isinstance(after[0], p.TextChunk)


async def test_agent_client_a_stall_ends_after_stall_seconds_and_the_answer_completes(fake_agent, mock_clock):
    agent = await fake_agent(stall_seconds=100)
    async with open_agent_connection(agent.base_url, 1, idle_timeout=1000) as conn:
        await conn.send_user_message("wait for it [[stall]]")
        assert isinstance(await conn.receive(), p.TextChunk)
        before, after = await next_frame_after(conn, mock_clock, 99)
        assert before == after == []
        before, after = await next_frame_after(conn, mock_clock, 1)
        assert len(after) == 1 and isinstance(after[0], p.TextChunk)
        frames = await collect_answer(conn)
    assert isinstance(frames[-1], p.End)
