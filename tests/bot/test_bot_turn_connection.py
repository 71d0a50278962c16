"""The connection actor as an executor of the turn machine, with a real fake
agent on loopback and a real store, but no homeserver: the Matrix client is a
stand-in whose every call fails as during an outage, the actor's context a
stand-in with a plain channel for a mailbox.

Rules of connection.py's docstring tested here: Matrix failures are charged
to Matrix (1, 4), a stop says "interrupted" (1), nothing is overwritten (2),
frames outside an answer are bounded (5); the confirmation keys are
namespaced (turn rule 4) end to end, and a confirmation is a record of a
real approvals actor whose verdict reaches the agent.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from lambda_actors.bot.actors import connection as conn_module
from lambda_actors.bot.actors.connection import LATE_PATIENCE, send_next_at
from lambda_actors.bot.actors.outbox import Queued
from lambda_actors.bot.actors.services import (
    DONE_KEY,
    ERROR_HOMESERVER,
    ERROR_INTERRUPTED,
    ERROR_KEY,
    SOURCE_KEY,
    BotServices,
    Timing,
)
from lambda_actors import ChildSpec, open_supervisor
from lambda_actors.approvals.actor import approvals_actor
from lambda_actors.approvals.gate import Answer, AskWhich, Decided
from lambda_actors.approvals.messages import Answered, Confirm
from lambda_actors.approvals.record import Approval, Source, Status, Via
from lambda_actors.approvals.store import ApprovalStore
from lambda_actors.bot.actors.services import APPROVALS_PATH
from lambda_actors.bot.actors.turns import Deliver, TurnDone
from lambda_actors.bot.store import RoomBinding
from lambda_actors.runtime.errors import NoSuchActor
from lambda_actors.bot.config import AgentConfig, AgentsConfig
from lambda_actors.bot.limits import Limits
from lambda_actors.bot.store import Store
from lambda_actors.bot.streaming import INTERRUPTED
from lambda_actors.matrix.errors import HomeserverUnavailable

HANG = 20  # a guard against hangs, never what a test asserts
ROOM = "!room:test"


class Recorder:
    """An address that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.changed = trio.Event()

    async def send(self, msg: Any) -> None:
        self.send_nowait(msg)

    def send_nowait(self, msg: Any) -> None:
        self.sent.append(msg)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, condition) -> None:
        with trio.fail_after(HANG):
            while not condition():
                await self.changed.wait()


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class Mailbox:
    def __init__(self) -> None:
        self.send_channel, self.receive_channel = trio.open_memory_channel[Any](100)

    async def receive(self) -> Any:
        return await self.receive_channel.receive()


@dataclass
class Registry:
    outbox: Recorder
    #: The node's approvals actor, when a test runs one.
    approvals: Any = None

    def get(self, path: str) -> Recorder:
        return self.outbox

    def lookup(self, path: str) -> Any:
        if path == APPROVALS_PATH and self.approvals is not None:
            return self.approvals
        raise NoSuchActor(f"nothing is registered as {path!r}")


@dataclass
class Ctx:
    mailbox: Mailbox = field(default_factory=Mailbox)
    log: Log = field(default_factory=Log)
    registry: Registry = field(default_factory=lambda: Registry(Recorder()))


class DownHomeserver:
    """Every call fails the way an unreachable homeserver does."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def typing(self, room_id: str, typing: bool, timeout_ms: int | None = None) -> None:
        self.calls.append("typing")
        raise HomeserverUnavailable("connection refused", homeserver="http://hs.test")

    async def upload(self, data: bytes, mimetype: str, filename: str) -> str:
        self.calls.append("upload")
        raise HomeserverUnavailable("connection refused", homeserver="http://hs.test")


TIMING = Timing(
    agent_idle_timeout=5.0,
    typing_delay=0.01,
    edit_interval=0.05,
    late_frame_grace=0.01,
    confirmation_timeout=30.0,
)


@dataclass
class Rig:
    ctx: Ctx
    store: Store
    agent: Any
    room: Recorder
    client: DownHomeserver
    actor_error: list[BaseException]
    scope: trio.CancelScope

    def deliver(self, event_id: str, text: str, room: Recorder | None = None) -> Deliver:
        self.store.ingest([(event_id, ROOM, {"type": "m.room.message"}, False)], "s1")
        return Deliver(event_id, ROOM, text, (), room or self.room)  # type: ignore[arg-type]

    async def send(self, msg: Any) -> None:
        await self.ctx.mailbox.send_channel.send(msg)

    def rows(self) -> list:
        return [item for queued in self.ctx.registry.outbox.sent for item in queued.items]

    def final(self, event_id: str) -> dict:
        done = [r.content for r in self.rows() if r.content.get(SOURCE_KEY) == event_id and r.content.get(DONE_KEY)]
        assert done, f"no done send for {event_id}"
        return done[-1]

    async def turn_done(self, event_id: str, room: Recorder | None = None) -> None:
        await (room or self.room).wait_for(lambda: TurnDone(event_id) in (room or self.room).sent)


@pytest.fixture
async def rig(fake_agent, tmp_path: Path, nursery):
    yield await make_rig(fake_agent, tmp_path, nursery, Limits(frames_outside_answer=8))


async def make_rig(fake_agent, tmp_path: Path, nursery, limits: Limits, approvals: ApprovalStore | None = None) -> Rig:
    agent = await fake_agent(slow_interval=0.05, stall_seconds=30)
    config = AgentConfig(id="agent-0", label="Agent 0", base_url=agent.base_url, workspace_path=agent.workspace, max_file_bytes=10_000)
    agents = AgentsConfig(agents=(config,), limits=limits)
    store = Store.open(tmp_path / "bot.sqlite3")
    client = DownHomeserver()
    bot = BotServices(store=store, client=client, agents=agents, user_id="@bot:test", timing=TIMING, approvals=approvals)  # type: ignore[arg-type]
    ctx = Ctx()
    errors: list[BaseException] = []
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            try:
                await conn_module.connection_actor(ctx, bot, config, 7)
            except BaseException as exc:  # recorded for the test to assert on
                errors.append(exc)
                raise

    nursery.start_soon(run)
    return Rig(ctx, store, agent, Recorder(), client, errors, scope)


async def test_homeserver_failures_during_a_turn_do_not_fail_it_or_crash_the_connection(rig: Rig) -> None:
    await rig.send(rig.deliver("$1", "hello [[slow]] [[file:r.txt]]"))
    await rig.turn_done("$1")
    final = rig.final("$1")
    assert "echo: hello" in final["body"] and ERROR_KEY not in final
    assert "typing" in rig.client.calls and "upload" in rig.client.calls
    (file_notice,) = [r.content for r in rig.rows() if r.content.get(ERROR_KEY) == ERROR_HOMESERVER]
    assert "homeserver did not take the upload" in file_notice["body"]
    # The same socket serves the next turn: nothing crashed, nothing was charged to the agent.
    await rig.send(rig.deliver("$2", "again"))
    await rig.turn_done("$2")
    assert "echo: again" in rig.final("$2")["body"]
    assert rig.agent.connections["7"] == 1 and rig.actor_error == []
    assert "connection.typing.failed" in rig.ctx.log.events()


async def test_a_stop_mid_answer_tells_the_user_it_was_interrupted(rig: Rig) -> None:
    await rig.send(rig.deliver("$1", "think [[stall]]"))
    with trio.fail_after(HANG):
        await rig.agent.wait_for_message(lambda m: "think" in m.text, chat_id=7)
    await rig.ctx.mailbox.send_channel.aclose()  # what a supervisor's stop does
    await rig.turn_done("$1")
    final = rig.final("$1")
    assert final["body"].endswith(INTERRUPTED) and final[ERROR_KEY] == ERROR_INTERRUPTED
    assert "could not answer" not in final["body"]
    assert rig.store.is_handled("$1")


async def test_a_kill_mid_answer_also_says_interrupted(rig: Rig) -> None:
    await rig.send(rig.deliver("$1", "think [[stall]]"))
    with trio.fail_after(HANG):
        await rig.agent.wait_for_message(lambda m: "think" in m.text, chat_id=7)
    rig.scope.cancel()  # what a supervisor's kill does
    await rig.turn_done("$1")
    final = rig.final("$1")
    assert final["body"].endswith(INTERRUPTED) and final[ERROR_KEY] == ERROR_INTERRUPTED


async def test_two_deliveries_are_both_answered_in_order_never_overwritten(rig: Rig) -> None:
    other = Recorder()
    await rig.send(rig.deliver("$1", "first [[slow]]"))
    await rig.send(rig.deliver("$2", "second", room=other))
    await rig.send(rig.deliver("$1", "first [[slow]]"))  # a room that restarted delivers again
    await rig.turn_done("$2", other)
    await rig.turn_done("$1")
    assert rig.agent.received_messages(7) == ["first [[slow]]", "second"]


async def test_a_flood_between_answers_cuts_the_socket_and_the_next_turn_reconnects(rig: Rig) -> None:
    await rig.send(rig.deliver("$1", "hi [[flood]]"))
    await rig.turn_done("$1")
    assert "echo: hi" in rig.final("$1")["body"]
    with trio.fail_after(HANG):
        await rig.agent.wait_until(lambda: "7" not in rig.agent.open_chats)
    assert "connection.too_many_frames" in rig.ctx.log.events(), rig.ctx.log.lines
    await rig.send(rig.deliver("$2", "calm now"))
    await rig.turn_done("$2")
    assert "echo: calm now" in rig.final("$2")["body"]
    assert rig.agent.connections["7"] == 2 and rig.actor_error == []


class ShownViews:
    """What the approvals actor would show in Matrix, recorded (Matrix has its own tests)."""

    def __init__(self) -> None:
        self.shown: list[Approval] = []
        self.changed = trio.Event()

    def agent_label(self, agent_id: str) -> str | None:
        return "Agent 0"

    def room_for(self, approver: str, agent_id: str) -> str | None:
        return ROOM

    async def show(self, ctx: Any, record: Approval) -> None:
        self.shown.append(record)
        self.changed.set()
        self.changed = trio.Event()

    async def ask_which(self, ctx: Any, room_id: str, event_id: str, candidates: tuple[Approval, ...]) -> None:
        pass

    async def wait_for(self, condition) -> None:
        with trio.fail_after(HANG):
            while not condition():
                await self.changed.wait()


OWNER, STRANGER = "@alice:test", "@mallory:test"


async def test_a_confirmation_is_an_approval_record_and_only_the_owners_answer_reaches_the_agent(rig: Rig) -> None:
    rig.store.bind_room(RoomBinding(ROOM, OWNER, "agent-0", 7, "Chat 1"))
    views = ShownViews()
    approvals = ApprovalStore(sqlite3.connect(":memory:"))
    async with open_supervisor("node", [ChildSpec("approvals", approvals_actor, args=(approvals, views))]) as sup:
        gate = sup.address("approvals")
        rig.ctx.registry.approvals = gate
        await rig.send(rig.deliver("$1", "may I [[confirm]]"))
        await views.wait_for(lambda: bool(views.shown))
        (record,) = views.shown
        assert (record.source, record.approver, record.agent_id, record.room_id) == (Source.AGENT, OWNER, "agent-0", ROOM)
        assert (record.action, record.details, record.status) == ("delete_file", "delete outbox/old.txt", Status.PENDING)
        assert record.expires_at - record.created_at == TIMING.confirmation_timeout
        # Anyone but the room's owner changes nothing; the owner's !yes decides.
        stranger = await gate.call(Answered(ROOM, "$s", Answer(STRANGER, False, Via.COMMAND, time.time())))
        assert not isinstance(stranger, Decided)
        owner = await gate.call(Answered(ROOM, "$o", Answer(OWNER, True, Via.COMMAND, time.time())))
        assert isinstance(owner, Decided) and owner.record.status is Status.APPROVED
        await rig.turn_done("$1")
        assert re.search(r"confirmation \S+: approved", rig.final("$1")["body"])
        # The same confirmation asked again (the turn replayed) is the same
        # record, decided: no second record, no second prompt.
        again = await gate.call(Confirm(record.id, "agent-0", ROOM, OWNER, "delete_file", "delete outbox/old.txt", 30.0))
        assert again.status is Status.APPROVED and approvals.listing() == [again] and len(views.shown) == 2


async def test_two_confirmations_pending_a_bare_yes_decides_nothing(rig: Rig) -> None:
    # One gate for everything the owner answers: another record waiting in
    # the same room makes a bare !yes ambiguous, so the gate asks which.
    rig.store.bind_room(RoomBinding(ROOM, OWNER, "agent-0", 7, "Chat 1"))
    views = ShownViews()
    approvals = ApprovalStore(sqlite3.connect(":memory:"))
    async with open_supervisor("node", [ChildSpec("approvals", approvals_actor, args=(approvals, views))]) as sup:
        gate = sup.address("approvals")
        rig.ctx.registry.approvals = gate
        other = await gate.call(Confirm("apr_other", "agent-0", ROOM, OWNER, "rename y", "", 30.0))
        await rig.send(rig.deliver("$1", "may I [[confirm]]"))
        await views.wait_for(lambda: len(views.shown) == 2)
        bare = await gate.call(Answered(ROOM, "$y", Answer(OWNER, True, Via.COMMAND, time.time())))
        assert isinstance(bare, AskWhich) and len(bare.candidates) == 2
        assert all(r.status is Status.PENDING for r in approvals.pending()) and len(approvals.pending()) == 2
        mine = next(r for r in views.shown if r.id != other.id)
        await gate.call(Answered(ROOM, "$n", Answer(OWNER, False, Via.REACTION, time.time(), mine.id)))
        await rig.turn_done("$1")
        assert re.search(r"confirmation \S+: denied", rig.final("$1")["body"])


async def test_a_turn_that_ends_withdraws_its_pending_confirmations_and_only_those(fake_agent, tmp_path, nursery) -> None:
    approvals = ApprovalStore(sqlite3.connect(":memory:"))
    rig = await make_rig(fake_agent, tmp_path, nursery, Limits(), approvals=approvals)
    rig.store.bind_room(RoomBinding(ROOM, OWNER, "agent-0", 7, "Chat 1"))
    views = ShownViews()
    async with open_supervisor("node", [ChildSpec("approvals", approvals_actor, args=(approvals, views))]) as sup:
        gate = sup.address("approvals")
        rig.ctx.registry.approvals = gate
        # Another agent's confirmation in the same room is not this turn's to withdraw.
        await gate.call(Confirm("apr_other", "agent-1", ROOM, OWNER, "rename y", "", 30.0))
        await rig.send(rig.deliver("$1", "may I [[confirm]]"))
        await views.wait_for(lambda: len(views.shown) == 2)
        await rig.ctx.mailbox.send_channel.aclose()  # a stop while the agent waits for the answer
        await rig.turn_done("$1")
        (mine,) = [r for r in approvals.listing() if r.id != "apr_other"]
        assert (mine.status, mine.decided_via) == (Status.CANCELLED, Via.API)
        assert views.shown[-1] == mine  # the prompt is edited to say so
        assert approvals.get("apr_other").status is Status.PENDING


async def test_with_no_gate_to_ask_the_agent_is_told_no_at_once_and_the_owner_why(rig: Rig) -> None:
    rig.store.bind_room(RoomBinding(ROOM, OWNER, "agent-0", 7, "Chat 1"))
    await rig.send(rig.deliver("$1", "may I [[confirm]]"))
    await rig.turn_done("$1")
    assert re.search(r"confirmation \S+: denied", rig.final("$1")["body"])
    assert any("could not ask you" in r.content["body"] for r in rig.rows())
    assert "connection.gate_unavailable" in rig.ctx.log.events()


async def test_an_agent_still_talking_after_its_end_gets_the_next_message_on_a_fresh_socket(fake_agent, tmp_path, nursery) -> None:
    # A budget the flood does not reach before the next message: without a
    # fresh socket, its frames would be read as the next answer.
    rig = await make_rig(fake_agent, tmp_path, nursery, Limits(frames_outside_answer=10**9))
    await rig.send(rig.deliver("$1", "hi [[flood]]"))
    await rig.turn_done("$1")
    with trio.fail_after(HANG):
        await rig.agent.wait_until(lambda: rig.agent.flooded["7"] > 0)
    await rig.send(rig.deliver("$2", "calm now"))
    await rig.turn_done("$2")
    assert "(flood)" not in rig.final("$2")["body"] and "echo: calm now" in rig.final("$2")["body"]
    assert "connection.fresh_socket" in rig.ctx.log.events()
    assert rig.agent.connections["7"] == 2 and rig.actor_error == []


@pytest.mark.parametrize(
    ("ended_at", "late_at", "now", "expected"),
    [
        (10.0, -math.inf, 10.05, 10.1),  # just after END: wait out the grace
        (10.0, -math.inf, 10.2, 10.2),  # quiet since END: send now
        (10.0, 10.02, 10.05, 10.12),  # a late chunk just after END: quiet a grace after it
        (10.0, 10.25, 10.3, 10.35),  # still talking: look again when quiet, or at patience's end
        (10.0, 10.39, 10.4, None),  # talking LATE_PATIENCE graces past END: a fresh socket
        (10.0, 15.0, 30.0, 30.0),  # talked long ago, quiet now: send now
    ],
)
def test_the_next_message_waits_for_a_quiet_socket_or_takes_a_fresh_one(ended_at, late_at, now, expected) -> None:
    assert LATE_PATIENCE == 4
    at = send_next_at(ended_at, late_at, now, grace=0.1)
    assert at == (None if expected is None else pytest.approx(expected))
