"""End to end: an agent that attacks the bot on purpose (issue 10).

The agent here is the test's own trio-websocket server, not the fake agent:
it floods frames after END, reuses another agent's confirmation request id,
asks with a huge confirmation text, answers with far more than an answer may
hold, and sends more files than an answer may post. Both agents of the stack
point at it (``/h0/`` and ``/h1/``), against the session's real Synapse.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import trio
import trio_websocket
from harness.bot import TEST_SUPERVISION, TEST_TIMING
from harness.chat import onboard

from lambda_actors.agent import protocol as p
from lambda_actors.bot.limits import Limits
from lambda_actors.bot.streaming import CUT_NOTE
from lambda_actors.loopback.stack import open_loopback_stack
from lambda_actors.runtime.supervision_config import parse_supervision_config

LIMITS = Limits()


@dataclass
class HostileAgent:
    """A WebSocket agent that misbehaves by what the user's text asks for."""

    port: int = 0
    #: (agent number, request id, approved) of every CONFIRM_RESPONSE.
    responses: list[tuple[int, str, bool]] = field(default_factory=list)
    #: Frames sent by "flood" after END, per agent number, and whether the bot cut the socket.
    flooded: Counter[int] = field(default_factory=Counter)
    cut: trio.Event = field(default_factory=trio.Event)
    connections: Counter[int] = field(default_factory=Counter)

    def base_url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/h{n}/"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None)
            self.port = server.port
            task_status.started()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        n = int(request.path.split("/")[1].removeprefix("h"))
        ws = await request.accept()
        self.connections[n] += 1
        try:
            await ws.send_message(p.encode(p.Status(state="ready", chat_id="x")))
            while True:
                frame = p.parse_client_frame(await ws.get_message())
                if isinstance(frame, p.UserMessage):
                    await self._answer(n, ws, frame.text)
        except trio_websocket.ConnectionClosed:
            pass

    async def _confirm(self, n: int, ws, request_id: str, action: str) -> bool:
        await ws.send_message(p.encode(p.CustomUpdate(payload={}, confirm=p.ConfirmRequest(request_id, action, "details"))))
        while True:
            frame = p.parse_client_frame(await ws.get_message())
            if isinstance(frame, p.ConfirmResponse):
                self.responses.append((n, frame.request_id, frame.approved))
                return frame.approved

    async def _answer(self, n: int, ws, text: str) -> None:
        async def send(frame: object) -> None:
            await ws.send_message(p.encode(frame))

        if "flood" in text:
            await send(p.TextChunk("flooding"))
            await send(p.End(tokens_used=1))
            try:
                while True:  # without pause, until the bot closes the socket
                    await send(p.TextChunk(" (flood)"))
                    self.flooded[n] += 1
            finally:
                self.cut.set()
        elif "collide" in text:
            approved = await self._confirm(n, ws, "same-id", f"act for agent {n}")
            await send(p.TextChunk(f"agent {n} was {'approved' if approved else 'denied'}"))
            await send(p.End(tokens_used=1))
        elif "bigconfirm" in text:
            approved = await self._confirm(n, ws, "big", "A" * 100_000)
            await send(p.TextChunk(f"big was {'approved' if approved else 'denied'}"))
            await send(p.End(tokens_used=1))
        elif "oversize" in text:
            for _ in range(LIMITS.answer_parts + 4):
                await send(p.TextChunk("y" * 30_000 + "\n"))
            await send(p.End(tokens_used=1))
        elif "long" in text:
            await send(p.TextChunk("z" * 45_000 + "THE END"))
            await send(p.End(tokens_used=1))
        elif "files" in text:
            for i in range(LIMITS.answer_files + 4):
                await send(p.SendFile(path=f"out/f{i}.txt"))
            await send(p.TextChunk("sent files"))
            await send(p.End(tokens_used=1))
        else:
            await send(p.TextChunk(f"echo: {text}"))
            await send(p.End(tokens_used=1))


@pytest.fixture
async def hostile_stack(synapse, tmp_path, nursery):
    hostile = HostileAgent()
    await nursery.start(hostile.serve)
    supervision = parse_supervision_config(TEST_SUPERVISION, "test supervision.toml")
    async with open_loopback_stack(
        tmp_path, users=("alice", "bob"), homeserver=synapse, timing=TEST_TIMING, supervision=supervision
    ) as stack:
        text = stack.config_path.read_text()
        for n, fake in enumerate(stack.agents):
            text = text.replace(f'"{fake.base_url}"', f'"{hostile.base_url(n)}"')
            (fake.workspace / "out").mkdir(parents=True, exist_ok=True)
            for i in range(LIMITS.answer_files + 4):
                (fake.workspace / "out" / f"f{i}.txt").write_text(f"file {i}\n")
        stack.config_path.write_text(text)
        await stack.start_bot()
        yield stack, hostile


async def test_an_agent_flooding_after_end_is_cut_and_answers_again(hostile_stack):
    stack, hostile = hostile_stack
    alice = await stack.scripted_user("alice")
    _, chat = await onboard(stack, alice)
    answer = await alice.answer(await alice.say(chat, "flood"))
    assert answer.done and "flooding" in answer.text and "(flood)" not in answer.text
    with trio.fail_after(30):
        await hostile.cut.wait()
    # The flood was cut (bounded by the budget plus what the socket buffers),
    # and the next message gets an answer on a fresh socket.
    after = await alice.answer(await alice.say(chat, "still there?"))
    assert "echo: still there?" in after.text
    assert hostile.connections[0] == 2


async def test_confirmation_ids_of_two_agents_never_collide_and_long_prompts_are_cut(hostile_stack):
    stack, hostile = hostile_stack
    alice = await stack.scripted_user("alice")  # agent-0
    bob = await stack.scripted_user("bob")  # agent-1
    _, alice_chat = await onboard(stack, alice)
    _, bob_chat = await onboard(stack, bob)
    alice_asks = await alice.say(alice_chat, "collide")
    await alice.notice(alice_chat, "act for agent 0")
    bob_asks = await bob.say(bob_chat, "collide")
    await bob.notice(bob_chat, "act for agent 1")
    # Both agents used request id "same-id"; each owner's answer reaches only their own agent.
    await alice.say(alice_chat, "!yes")
    assert "agent 0 was approved" in (await alice.answer(alice_asks)).text
    await bob.say(bob_chat, "!no")
    assert "agent 1 was denied" in (await bob.answer(bob_asks)).text
    assert sorted(hostile.responses) == [(0, "same-id", True), (1, "same-id", False)]

    big = await alice.say(alice_chat, "bigconfirm")
    prompt = await alice.notice(alice_chat, "AAAA")
    body = prompt.content["body"]
    assert "more characters not shown" in body and len(body) < LIMITS.confirmation_chars + 500
    await alice.say(alice_chat, "!yes")
    assert "big was approved" in (await alice.answer(big)).text


async def test_answer_sizes_and_counts_are_bounded_and_always_end_visibly(hostile_stack):
    stack, _ = hostile_stack
    alice = await stack.scripted_user("alice")
    _, chat = await onboard(stack, alice)
    # Longer than one event: every part delivered, the end visible and marked done.
    long = await alice.answer(await alice.say(chat, "long"), timeout=60)
    assert long.done and long.text.replace("\n", "").endswith("THE END")
    assert long.text.count("z") == 45_000
    # Far more than an answer may hold: cut at answer_parts, with a note, marked done.
    over = await alice.answer(await alice.say(chat, "oversize"), timeout=90)
    assert over.done and len(over.parts) == LIMITS.answer_parts
    assert list(over.parts.values())[-1].endswith(CUT_NOTE.format(parts=LIMITS.answer_parts))
    # More files than an answer may post: the first answer_files, then one note.
    files = await alice.answer(await alice.say(chat, "files"), timeout=60)
    assert files.done and len(files.files) == LIMITS.answer_files
    assert "limit" in files.errors
    await alice.notice(chat, f"more than {LIMITS.answer_files} files")
