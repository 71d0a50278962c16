"""The connection actor: one per (agent, chat), holding that chat's WebSocket.

It lives under its agent's supervisor (``node/agents/<agent_id>``), started on
first use by the room that needs it. Each :class:`Deliver` is one *turn*: the
user's message goes to the agent as ``USER_MESSAGE``, and the answer streams
back into the room as one message that grows by edits
(:class:`~lambda_actors.bot.streaming.AnswerStream` decides when), with files
the agent sends and confirmations it asks for along the way.

Every turn ends in exactly one of two ways, both recorded together with the
event being marked handled (``Store.finish``), and both reported to the room
with :class:`~lambda_actors.bot.actors.room.TurnDone`:

- the answer (the agent's ``END`` or ``ERROR``), or
- an error message for the user: the connection failed, the agent stalled,
  or this actor was stopped or killed mid-answer.

A failed connection then *crashes* the actor on purpose: the supervisor's
backoff spaces out reconnects, and an agent that keeps failing exhausts its
supervisor's intensity and is parked, so its rooms answer at once that it is
unavailable instead of hanging (see ``supervision.toml``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import trio

from ...runtime.address import Address
from ...agent import protocol as p
from ...agent.client import (
    AgentBusy,
    AgentClosed,
    AgentConnection,
    AgentConnectionError,
    AgentStalled,
    AgentUnreachable,
    FrameTooLarge,
    Late,
    NoStatus,
    open_agent_connection,
)
from ..config import AgentConfig
from ..files import UnsafeAgentFile, load_agent_file
from ..store import OutboxItem, PendingConfirmation
from ..streaming import INTERRUPTED, AnswerStream, EditPart, PostPart
from ...matrix import content as contents
from ...matrix.errors import MatrixError
from ...runtime.spec import ChildSpec
from .outbox import tell_outbox
from .turns import ConfirmAnswer, Deliver, TurnDone
from .services import AGENTS_PATH, DONE_KEY, SOURCE_KEY, BotServices, notice, txn_id


def connection_address(ctx: Any, agent_id: str, chat_id: int, bot: BotServices) -> Address:
    """The connection actor for (agent, chat), started on first use."""
    agent = bot.agents.agent(agent_id)
    supervisor = ctx.registry.supervisor(f"{AGENTS_PATH}/{agent_id}")
    return ctx.registry.get_or_start(
        ("chat", agent_id, chat_id),
        supervisor,
        lambda: ChildSpec(f"chat-{chat_id}", connection_actor, args=(bot, agent, chat_id), restart="transient"),
    )


async def connection_actor(ctx: Any, bot: BotServices, agent: AgentConfig, chat_id: int) -> None:
    await _Connection(ctx, bot, agent, chat_id).run()


class _Connection:
    def __init__(self, ctx: Any, bot: BotServices, agent: AgentConfig, chat_id: int) -> None:
        self.ctx = ctx
        self.bot = bot
        self.agent = agent
        self.chat_id = chat_id
        self.timing = bot.timing
        #: A Deliver that arrived while a turn was running (the room sends one
        #: turn at a time, so this is a safety net, not a queue).
        self.next: Deliver | None = None
        self.stream: AnswerStream | None = None
        self.last_action: PostPart | EditPart | None = None
        #: When the last answer ended (Trio clock), for the late-frame grace.
        self.ended_at = -math.inf
        #: The turn being answered; failed with a message if anything ends it early.
        self.current: Deliver | None = None
        #: The open socket's nursery, for work that outlives a turn (typing).
        self.background: trio.Nursery

    async def next_turn(self) -> Deliver | None:
        """Wait for the next Deliver; None when idle long enough to close."""
        if self.next is not None:
            turn, self.next = self.next, None
            return turn
        with trio.move_on_after(self.timing.connection_idle_close):
            while True:
                try:
                    msg = await self.ctx.mailbox.receive()
                except trio.EndOfChannel:
                    return None  # we are being stopped
                if isinstance(msg, Deliver):
                    return msg
                # A confirmation answer with no turn running: the turn it
                # belonged to is over (the agent gave up waiting, or we
                # restarted); the agent no longer expects it.
                self.ctx.log.info("connection.stale_message", message=repr(msg))
        return None

    async def run(self) -> None:
        self.current = await self.next_turn()
        while self.current is not None:
            failure: AgentConnectionError | None = None
            try:
                async with open_agent_connection(
                    self.agent.base_url,
                    self.chat_id,
                    connect_timeout=self.timing.agent_connect_timeout,
                    status_timeout=self.timing.agent_status_timeout,
                    idle_timeout=self.timing.agent_idle_timeout,
                ) as conn:
                    failure = await self._serve(conn)
            except AgentConnectionError as exc:
                failure = exc
            except BaseException:
                # Stopped (shutdown) or killed mid-answer: the user hears about it.
                if self.current is not None:
                    await self.fail_turn(self.current, INTERRUPTED)
                raise
            if failure is not None:
                self.ctx.log.warning("connection.failed", agent=self.agent.id, chat_id=self.chat_id, error=str(failure))
                if self.current is not None:
                    await self.fail_turn(
                        self.current,
                        f"⚠ {self.agent.label} could not answer: {_for_users(failure)}. Please send your message again.",
                    )
                # A crash on purpose: the supervisor's backoff and intensity
                # decide when (and whether) this agent is tried again.
                raise failure

    async def _serve(self, conn: AgentConnection) -> AgentConnectionError | None:
        """Serve turns on one open socket, starting with ``self.current``.

        Returns with ``self.current`` None when idle long enough to close;
        with ``self.current`` set and no error when the socket died between
        answers (reconnect and go on: nobody was waiting on it, so that is no
        failure); and with the error when it failed during a turn.

        A reader task takes every frame as soon as it arrives, so a frame
        sent after an answer's END (a second END, a late chunk) is read while
        no answer is open and is recognised as late, instead of being taken
        for the start of the next answer.
        """
        frames_in, frames = trio.open_memory_channel[Any](math.inf)
        async with trio.open_nursery() as nursery:
            self.background = nursery
            nursery.start_soon(_read_frames, conn, frames_in)
            try:
                while self.current is not None:
                    if await self._socket_died_while_idle(frames):
                        return None
                    await self.run_turn(conn, frames, self.current)
                    self.current = None
                    self.current = await self.next_turn()
                return None
            except AgentConnectionError as exc:
                return exc
            finally:
                nursery.cancel_scope.cancel()

    async def _socket_died_while_idle(self, frames: trio.MemoryReceiveChannel[Any]) -> bool:
        """Take what arrived since the last answer ended; True if the socket is gone."""
        # Frames sent just after END may still be on the wire: give them a moment.
        await trio.sleep_until(self.ended_at + self.timing.late_frame_grace)
        while True:
            try:
                item = frames.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(item, AgentConnectionError):
                self.ctx.log.info("connection.closed_while_idle", chat_id=self.chat_id, reason=str(item))
                return True
            self.ctx.log.info("connection.late_frame_ignored", frame=type(getattr(item, "frame", item)).__name__)
        return False

    # -- one turn ---------------------------------------------------------------

    async def run_turn(self, conn: AgentConnection, frames: trio.MemoryReceiveChannel[Any], turn: Deliver) -> None:
        self.stream = AnswerStream(min_interval=self.timing.edit_interval)
        self.last_action = None
        self.files_sent = 0
        self.unreadable = 0
        await conn.send_user_message(turn.text, turn.attachments)
        self.ctx.log.info("connection.delivered", event_id=turn.event_id, chat_id=self.chat_id)
        failure: AgentConnectionError | None = None
        answered = trio.Event()
        self.background.start_soon(self._show_typing, turn.room_id, answered)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer_confirmations, conn, turn)
            try:
                await self._stream_answer(frames, turn, nursery)
            except AgentConnectionError as exc:
                # Raised from here rather than through the nursery, which
                # would wrap it in an exception group.
                failure = exc
            finally:
                answered.set()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _stream_answer(self, frames: trio.MemoryReceiveChannel[Any], turn: Deliver, nursery: trio.Nursery) -> None:
        while not self.stream.finished:
            due = self.stream.next_due()
            frame = None
            with trio.move_on_at(math.inf if due is None else due):
                frame = await frames.receive()
            if frame is None:
                await self._post(turn, self.stream.tick(trio.current_time()))
            elif isinstance(frame, AgentConnectionError):
                raise frame
            else:
                await self._on_frame(frame, turn, nursery)

    async def _on_frame(self, frame: Any, turn: Deliver, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        match frame:
            case Late(frame=late):
                self.ctx.log.info("connection.late_frame_ignored", frame=type(late).__name__)
            case p.TextChunk(text=text):
                await self._post(turn, self.stream.text(text, now))
            case p.ToolCallChunk(tool_name=name):
                await self._post(turn, self.stream.tool_call(name, now))
            case p.ToolResult(tool_name=name):
                await self._post(turn, self.stream.tool_result(name, now))
            case p.CustomUpdate(confirm=confirm) if confirm is not None:
                await self._ask(turn, confirm, nursery)
            case p.CustomUpdate():
                self.ctx.log.debug("connection.progress", chat_id=self.chat_id)
            case p.SendFile(path=path):
                await self._send_file(turn, path)
            case p.End():
                note = (
                    f"\n\n(The agent also sent {self.unreadable} unreadable frame(s); "
                    "the answer may be incomplete.)"
                    if self.unreadable
                    else ""
                )
                if note:
                    self.stream.text(note, now)
                await self._finish(turn, self.stream.end(now))
            case p.AgentError(message=message):
                await self._finish(turn, self.stream.fail(f"⚠ {self.agent.label} reported an error: {message}", now))
            case p.MalformedFrame(reason=reason):
                self.unreadable += 1
                self.ctx.log.warning("connection.malformed_frame", reason=reason, chat_id=self.chat_id)
            case p.UnknownFrame(type=kind):
                self.ctx.log.info("connection.unknown_frame_ignored", frame_type=kind, chat_id=self.chat_id)
            case _:
                self.ctx.log.debug("connection.frame_ignored", frame=type(frame).__name__)

    # -- posting ------------------------------------------------------------------

    def _items(self, turn: Deliver, actions: list[Any], *, done: bool = False) -> list[OutboxItem]:
        """Outbox rows for stream actions.

        A part's first post has a transaction id of the message and part
        alone, so the homeserver posts it once however often it is retried.
        Everything after it is an edit with an id scoped to this boot: after
        a restart the answer is written again, and its edits must not be
        taken for the earlier run's edits of the same number. For the same
        reason a part that an earlier run already posted is not posted again
        (that row exists, and would be ignored): it is edited.
        """
        items = []
        boot = self.bot.store.boot_id
        for action in actions:
            post_txn = txn_id("answer", turn.event_id, str(action.part_no))
            content = {**contents.text(action.body), SOURCE_KEY: turn.event_id}
            if done:
                content[DONE_KEY] = True
            if isinstance(action, PostPart) and not self.bot.store.has_send(post_txn):
                items.append(OutboxItem(0, post_txn, turn.room_id, "m.room.message", content))
            else:
                edit_txn = txn_id("edit", turn.event_id, boot, str(action.part_no), str(action.edit_no))
                items.append(OutboxItem(0, edit_txn, turn.room_id, "m.room.message", content, replaces_txn=post_txn))
        return items

    async def _post(self, turn: Deliver, actions: list[Any]) -> None:
        if actions:
            self.last_action = actions[-1]
            await tell_outbox(self.ctx, self.bot.store.enqueue(self._items(turn, actions)))

    async def _finish(self, turn: Deliver, actions: list[Any]) -> None:
        """End the turn: final sends and "handled" in one transaction, then tell the room."""
        last = self.last_action
        if not actions and last is not None:
            # The last throttled edit already showed the whole answer; repeat
            # it once more, marked done, so readers know nothing follows.
            actions = [EditPart(last.part_no, last.edit_no + 1, last.body)]
        self.ended_at = trio.current_time()
        queued = self.bot.store.finish(turn.event_id, self._items(turn, actions, done=True))
        for pending in self.bot.store.confirmations(turn.room_id):
            if pending.chat_id == self.chat_id:
                self.bot.store.resolve_confirmation(pending.request_id)
        await tell_outbox(self.ctx, queued)
        await turn.room.send(_turn_done(turn.event_id))

    async def fail_turn(self, turn: Deliver, message: str) -> None:
        with trio.move_on_after(5, shield=True):
            if self.bot.store.is_handled(turn.event_id):
                # Stopped between recording the answer and telling the room:
                # the answer stands; only the room has yet to hear.
                await turn.room.send(_turn_done(turn.event_id))
                return
            if self.stream is None or self.stream.finished:
                self.stream, self.last_action = AnswerStream(), None
            await self._finish(turn, self.stream.fail(message, trio.current_time()))

    # -- typing, confirmations, files ------------------------------------------------

    async def _show_typing(self, room_id: str, answered: trio.Event) -> None:
        """Show the bot typing while an answer takes a while.

        Runs beside the turn, not in it: a quick answer sends no typing at
        all (each typing change wakes every member's sync, which costs the
        homeserver more than the answer), a request in flight is never cut
        off, and "stopped typing" is not on the way to the next message.
        """
        with trio.move_on_after(self.timing.typing_delay):
            await answered.wait()
        if answered.is_set():
            return
        while not answered.is_set():
            await _quietly(self.bot.client.typing(room_id, True, timeout_ms=30_000))
            with trio.move_on_after(20):
                await answered.wait()
        await _quietly(self.bot.client.typing(room_id, False))

    async def _answer_confirmations(self, conn: AgentConnection, turn: Deliver) -> None:
        while True:
            msg = await self.ctx.mailbox.receive()
            if isinstance(msg, ConfirmAnswer):
                await conn.send_confirm_response(msg.request_id, msg.approved)
            elif isinstance(msg, Deliver):
                self.next = msg
            else:
                self.ctx.log.warning("connection.unknown_message", message=type(msg).__name__)

    async def _ask(self, turn: Deliver, confirm: p.ConfirmRequest, nursery: trio.Nursery) -> None:
        minutes = self.timing.confirmation_timeout / 60
        prompt = notice(
            turn.room_id,
            "confirm",
            (turn.event_id, confirm.request_id),
            f"🔐 {self.agent.label} asks for your permission to: {confirm.action}\n"
            f"{confirm.details}\n"
            f"Answer !yes or !no (or react ✅ / ❌). No answer within {minutes:g} min means no.",
            source=turn.event_id,
            done=False,
        )
        self.bot.store.add_confirmation(
            PendingConfirmation(
                confirm.request_id,
                turn.room_id,
                self.chat_id,
                confirm.action,
                confirm.details,
                prompt.txn_id,
                time.time() + self.timing.confirmation_timeout,
            )
        )
        await tell_outbox(self.ctx, self.bot.store.enqueue([prompt]))
        nursery.start_soon(self._expire, turn, confirm)

    async def _expire(self, turn: Deliver, confirm: p.ConfirmRequest) -> None:
        await trio.sleep(self.timing.confirmation_timeout)
        if self.bot.store.resolve_confirmation(confirm.request_id):
            self.ctx.log.info("connection.confirmation_expired", request_id=confirm.request_id)
            await tell_outbox(self.ctx, 
                self.bot.store.enqueue(
                    [notice(turn.room_id, "expired", (turn.event_id, confirm.request_id), f"⌛ No answer in time, so no: {confirm.action}")]
                )
            )
            # Through our own mailbox, so the one task that answers the
            # agent's confirmations sends it.
            await self.ctx.address.send(ConfirmAnswer(confirm.request_id, False))

    async def _send_file(self, turn: Deliver, path: str) -> None:
        number = self.files_sent
        self.files_sent += 1
        try:
            # Walks, checks and reads the file (blocking I/O): in a worker thread.
            resolved = await trio.to_thread.run_sync(
                load_agent_file, self.agent.workspace_path, path, self.agent.max_file_bytes
            )
            mxc = await self.bot.client.upload(resolved.data, resolved.mimetype, resolved.name)
        except UnsafeAgentFile as exc:
            self.ctx.log.warning("connection.file_refused", agent=self.agent.id, reason=str(exc))
            item = notice(turn.room_id, "file", (turn.event_id, str(number)), f"⚠ The agent tried to send a file I refused: {exc}")
        except (MatrixError, OSError) as exc:
            self.ctx.log.warning("connection.file_failed", agent=self.agent.id, error=str(exc))
            item = notice(turn.room_id, "file", (turn.event_id, str(number)), f"⚠ I could not deliver a file from the agent: {exc}")
        else:
            content = {
                **contents.file_message(mxc, resolved.name, mimetype=resolved.mimetype, size=resolved.size, msgtype=resolved.msgtype),
                SOURCE_KEY: turn.event_id,
            }
            item = OutboxItem(0, txn_id("file", turn.event_id, str(number)), turn.room_id, "m.room.message", content)
        await tell_outbox(self.ctx, self.bot.store.enqueue([item]))


def _for_users(failure: AgentConnectionError) -> str:
    """What went wrong, for the user: no URLs, codes or advice meant for operators (the log has those)."""
    match failure:
        case AgentBusy():
            return "another client holds this chat"
        case AgentUnreachable():
            return "it cannot be reached right now"
        case NoStatus():
            return "it did not get ready in time"
        case AgentStalled():
            return "it stopped responding in the middle of the answer"
        case FrameTooLarge():
            return "it sent a message too large to handle"
        case AgentClosed():
            return "it closed the connection in the middle of the answer"
    return "the connection to it failed"


async def _read_frames(conn: AgentConnection, frames_in: trio.MemorySendChannel[Any]) -> None:
    """Move every frame (and finally the error that ended the socket) into ``frames_in``."""
    try:
        async for frame in conn:
            frames_in.send_nowait(frame)
    except AgentConnectionError as exc:
        frames_in.send_nowait(exc)


def _turn_done(event_id: str) -> Any:

    return TurnDone(event_id)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except MatrixError:
        pass
