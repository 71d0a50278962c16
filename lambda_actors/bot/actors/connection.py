"""The connection actor: one per (agent, chat), holding that chat's WebSocket.

It lives under its agent's supervisor (``node/agents/<agent_id>``), started on
first use by the room that needs it. Each :class:`Deliver` is one *turn*: the
user's message goes to the agent as ``USER_MESSAGE``, and the answer streams
back into the room. What the user sees is decided by the pure machine
:class:`~lambda_actors.bot.turn.Turn` (its module docstring has the rules of
a turn, each with a unit test); this actor carries frames, messages and the
clock into it and performs the actions it returns.

The rules of the connection itself:

1. **Every turn ends in exactly one of two ways**, recorded together with the
   event being marked handled (``Store.finish``) and reported to the room with
   :class:`TurnDone`: the answer (the agent's ``END`` or ``ERROR``), or an
   error for the user: the connection failed (``agent_failed``), or this
   actor was stopped or killed mid-answer (``interrupted``: a clean stop
   never blames the agent).
2. **Nothing is overwritten.** Deliveries are queued explicitly
   (:class:`~lambda_actors.bot.turn.Deliveries`) and answered in order; when
   the connection gives up, every turn it holds is failed, none dropped.
3. **A failed connection crashes the actor on purpose** (after failing its
   turns): the supervisor's backoff spaces out reconnects, and an agent that
   keeps failing exhausts its supervisor's intensity and is parked. A socket
   that dies *between* answers is no failure: the next turn reconnects.
4. **Matrix failures are charged to Matrix.** Every homeserver call made while
   serving a turn (typing, uploads) goes through
   :func:`~lambda_actors.bot.actors.services.quietly` or catches
   ``MatrixFailure``: it never crashes the connection or counts against the
   agent. Answers only go to the store and the outbox, which waits out a
   homeserver outage and posts them when it is back.
5. **Frames outside an answer are bounded.** The socket reader drops them as
   they come and counts them (:class:`~lambda_actors.bot.turn.OutsideAnswer`);
   past ``Limits.frames_outside_answer`` between two answers the socket is cut
   (:class:`~lambda_actors.agent.client.TooManyFrames`) and the next turn
   reconnects. The next message waits until the socket has been quiet for
   ``late_frame_grace`` after an answer's ``END``, so frames sent just after
   it are not taken for its answer; an agent still sending ``LATE_PATIENCE``
   graces after END gets the next message on a fresh socket, which carries
   none of the old one's frames (:func:`send_next_at`).
6. **Idle connections close** after ``connection_idle_close`` with no turn;
   the actor then exits (it is transient).
7. **Confirmations are the node's approvals.** An agent's confirmation
   request becomes a record of ``node/approvals`` (``approvals/agent.py``:
   the room's owner its approver), asked with a call; a task beside the turn
   long-polls its verdict, which the turn passes to the agent. A turn that
   ends withdraws its records still pending. With no gate to ask, the agent
   is told no at once (``Turn.not_asked``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import trio

from ...approvals.actor import MAX_WAIT_S
from ...approvals.agent import confirmation_id
from ...approvals.messages import Confirm, NotFound, Read, Withdraw
from ...approvals.record import Approval, Source, Status
from ...agent.client import (
    AgentConnection,
    AgentConnectionError,
    Late,
    TooManyFrames,
    open_agent_connection,
)
from ...matrix import content as contents
from ...matrix.errors import MatrixFailure
from ...runtime.address import Address
from ...runtime.errors import ActorError, CallError
from ...runtime.spec import ChildSpec
from ..config import AgentConfig
from ..files import AgentFile, UnsafeAgentFile, load_agent_file
from ..store import OutboxItem
from ..streaming import INTERRUPTED
from ..turn import (
    AGENT_FAILED,
    INTERRUPTED_KIND,
    Action,
    Ask,
    Deliveries,
    Fetch,
    Finish,
    Log,
    OutsideAnswer,
    Reply,
    Say,
    Show,
    Turn,
    TurnSettings,
    failure_text,
)
from .outbox import tell_outbox
from .services import (
    AGENTS_PATH,
    APPROVALS_PATH,
    DONE_KEY,
    ERROR_FILE,
    ERROR_HOMESERVER,
    ERROR_KEY,
    SOURCE_KEY,
    BotServices,
    notice,
    quietly,
    txn_id,
)
from .turns import Deliver, TurnDone

#: Inputs held between the two pumps (mailbox, socket) and the turn loop. Small:
#: a pump that finds it full waits, which slows only this actor's own mailbox
#: or this agent's own socket (TCP back-pressure), never anyone else.
_INPUTS = 16


#: How long, in late-frame graces, an agent may go on sending after an
#: answer's END before the next message goes on a fresh socket.
LATE_PATIENCE = 4


def send_next_at(ended_at: float, late_at: float, now: float, grace: float) -> float | None:
    """When the next message may be sent on a socket whose last answer ended
    (or which opened) at ``ended_at``, and which last sent a frame outside an
    answer at ``late_at``.

    The protocol numbers nothing, so a frame that comes after the next
    message is sent is taken for its answer. The socket must first be quiet
    for ``grace``: frames just after END (a second END, a late chunk) are the
    old answer's. The result is ``now`` (send), a later time (look again
    then), or None when the agent has gone on talking ``LATE_PATIENCE``
    graces past END: the next message goes on a fresh socket, which carries
    none of it.
    """
    quiet_at = max(ended_at, late_at) + grace
    if quiet_at <= now:
        return now
    patience_ends = ended_at + LATE_PATIENCE * grace
    return None if now >= patience_ends else min(quiet_at, patience_ends)


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


# --- inputs of the turn loop ---------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    conn: AgentConnection
    frame: Any


@dataclass(frozen=True)
class _SocketEnded:
    conn: AgentConnection
    error: AgentConnectionError


@dataclass(frozen=True)
class _Decided:
    """The gate's verdict on the confirmation ``key`` of the turn that asked it."""

    key: str
    approved: bool


@dataclass(frozen=True)
class _Stopping:
    """The mailbox ended: the actor is being stopped (or restarted)."""


class _Connection:
    def __init__(self, ctx: Any, bot: BotServices, agent: AgentConfig, chat_id: int) -> None:
        self.ctx = ctx
        self.bot = bot
        self.agent = agent
        self.chat_id = chat_id
        self.timing = bot.timing
        self.limits = bot.agents.limits
        self.settings = TurnSettings(
            label=agent.label,
            namespace=f"{agent.id}/{chat_id}",
            edit_interval=bot.timing.edit_interval,
            confirmation_timeout=bot.timing.confirmation_timeout,
            limits=self.limits,
        )
        self.deliveries: Deliveries[Deliver] = Deliveries()
        self.outside = OutsideAnswer(self.limits.frames_outside_answer)
        #: The turn being answered, and its Deliver.
        self.turn: Turn | None = None
        self.deliver: Deliver | None = None
        #: When the last answer ended (Trio clock), for the late-frame grace.
        self.ended_at = -math.inf
        #: The tasks waiting for the gate's verdicts on this turn's confirmations.
        self.verdicts: list[trio.CancelScope] = []
        #: When the turn's message went to the agent, until its first output
        #: is shown (Trio clock; for the turn latency histograms).
        self.turn_started_at: float | None = None
        self.first_shown = False
        #: When the socket last sent a frame while no answer was open, and
        #: when it opened (frames before it are another socket's).
        self.late_at = -math.inf
        self.quiet_from = -math.inf
        self.stopping = False
        self.socket_gone = False
        self.nursery: trio.Nursery
        self.send_input: trio.MemorySendChannel[Any]
        self.inputs: trio.MemoryReceiveChannel[Any]

    # -- the actor's life ------------------------------------------------------------

    async def run(self) -> None:
        self.send_input, self.inputs = trio.open_memory_channel[Any](_INPUTS)
        failure: AgentConnectionError | None = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._pump_mailbox)
            try:
                await self._main()
            except AgentConnectionError as exc:
                # Raised after the nursery, not through it, so the supervisor
                # sees the error itself rather than an exception group.
                failure = exc
            except BaseException:
                # Killed (cancelled) mid-answer: the user hears it was interrupted.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._fail_all(INTERRUPTED, INTERRUPTED_KIND)
                raise
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            # A crash on purpose: the supervisor's backoff and intensity
            # decide when (and whether) this agent is tried again.
            raise failure

    async def _pump_mailbox(self) -> None:
        while True:
            try:
                msg = await self.ctx.mailbox.receive()
            except trio.EndOfChannel:
                msg = _Stopping()
            # Our own loop's channel: waits only while this actor is busy.
            await self.send_input.send(msg)
            if isinstance(msg, _Stopping):
                return

    async def _main(self) -> None:
        while True:
            if not len(self.deliveries) and not await self._wait_idle(None):
                return
            try:
                async with open_agent_connection(
                    self.agent.base_url,
                    self.chat_id,
                    connect_timeout=self.timing.agent_connect_timeout,
                    status_timeout=self.timing.agent_status_timeout,
                    idle_timeout=self.timing.agent_idle_timeout,
                ) as conn:
                    await self._serve(conn)
            except AgentConnectionError as exc:
                self.ctx.log.warning("connection.failed", agent=self.agent.id, chat_id=self.chat_id, error=str(exc))
                await self._fail_all(failure_text(self.agent.label, exc), AGENT_FAILED)
                raise
            if self.stopping:
                await self._fail_all(INTERRUPTED, INTERRUPTED_KIND)
                return
            if not self.socket_gone:
                # Idle long enough: close, unless a delivery slipped in just now.
                self._take_ready(None)
                if self.stopping or not len(self.deliveries):
                    return
            # Gone between answers: no failure; the next turn opens a new one.
            self.socket_gone = False

    async def _serve(self, conn: AgentConnection) -> None:
        """Serve turns on one open socket until it is idle, gone between answers, or we stop."""
        error: AgentConnectionError | None = None
        self.quiet_from = trio.current_time()
        self.late_at = -math.inf
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_frames, conn)
            try:
                while len(self.deliveries) or await self._wait_idle(conn):
                    fresh = await self._wait_until_quiet()
                    self._take_ready(conn)
                    if self.socket_gone or self.stopping or not len(self.deliveries):
                        break
                    if fresh:
                        self.ctx.log.info("connection.fresh_socket", agent=self.agent.id, chat_id=self.chat_id)
                        self.socket_gone = True
                        break
                    await self._run_turn(conn, self.deliveries.take())
                    if self.stopping:
                        break
            except AgentConnectionError as exc:
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _wait_until_quiet(self) -> bool:
        """Wait until the next message may go on this socket (see
        :func:`send_next_at`); True when it must go on a fresh one."""
        grace = self.timing.late_frame_grace
        while True:
            now = trio.current_time()
            at = send_next_at(max(self.ended_at, self.quiet_from), self.late_at, now, grace)
            if at is None:
                return True
            if at <= now:
                return False
            await trio.sleep_until(at)

    async def _wait_idle(self, conn: AgentConnection | None) -> bool:
        """Wait for a delivery with no turn running; False when idle long enough,
        stopping, or (with ``conn``) the socket is gone."""
        with trio.move_on_after(self.timing.connection_idle_close):
            while not len(self.deliveries):
                self._between_turns(await self.inputs.receive(), conn)
                if self.stopping or self.socket_gone:
                    return False
            return True
        return False

    def _take_ready(self, conn: AgentConnection | None) -> None:
        while True:
            try:
                item = self.inputs.receive_nowait()
            except trio.WouldBlock:
                return
            self._between_turns(item, conn)

    def _between_turns(self, item: Any, conn: AgentConnection | None) -> None:
        match item:
            case Deliver():
                if not self.deliveries.offer(item.event_id, item):
                    self.ctx.log.info("connection.repeated_delivery", event_id=item.event_id)
            case _Stopping():
                self.stopping = True
            case _SocketEnded(conn=c, error=error) if c is conn:
                self.ctx.log.info("connection.closed_while_idle", chat_id=self.chat_id, reason=str(error))
                self.socket_gone = True
            case _Decided():
                # The turn it belonged to is over (the agent gave up waiting);
                # the agent no longer expects it.
                self.ctx.log.info("connection.stale_verdict", key=item.key)
            case _Frame() | _SocketEnded():
                pass  # an earlier socket's, or dropped while idle
            case _:
                self.ctx.log.warning("connection.unknown_message", message=type(item).__name__)

    async def _read_frames(self, conn: AgentConnection) -> None:
        """Move the socket's frames (and finally the error that ended it) into the inputs.

        Frames outside an answer are dropped here, counted against the budget;
        past it the socket is cut. So neither memory nor the turn loop grows
        with what an agent sends unasked.
        """
        try:
            async for frame in conn:
                if isinstance(frame, Late):
                    self.late_at = trio.current_time()
                    if self.outside.frame():
                        error = TooManyFrames(
                            conn.url,
                            f"the agent sent over {self.outside.budget} frames while no answer was open; "
                            "the socket was cut (limits.frames_outside_answer)",
                        )
                        self.ctx.log.warning("connection.too_many_frames", agent=self.agent.id, chat_id=self.chat_id)
                        await conn.abort(error)
                        raise error
                    self.ctx.log.debug("connection.late_frame_dropped", frame=type(frame.frame).__name__)
                    continue
                # Our own loop's channel: a full one slows this agent's socket only.
                await self.send_input.send(_Frame(conn, frame))
        except AgentConnectionError as exc:
            await self.send_input.send(_SocketEnded(conn, exc))

    # -- one turn ---------------------------------------------------------------

    async def _run_turn(self, conn: AgentConnection, deliver: Deliver) -> None:
        turn = self.turn = Turn(self.settings, deliver.event_id)
        self.deliver = deliver
        self.outside.answer_started()
        answered = trio.Event()
        try:
            # To this chat's own socket: a slow agent slows only this connection.
            await conn.send_user_message(deliver.text, deliver.attachments)
            self.turn_started_at, self.first_shown = trio.current_time(), False
            self.ctx.log.info("connection.delivered", event_id=deliver.event_id, chat_id=self.chat_id)
            self.nursery.start_soon(self._show_typing, deliver.room_id, answered)
            while not turn.finished:
                item = None
                due = turn.next_due()
                with trio.move_on_at(math.inf if due is None else due):
                    item = await self.inputs.receive()
                await self._execute(conn, self._during_turn(turn, item, conn))
        except AgentConnectionError as exc:
            self.ctx.log.warning("connection.failed", agent=self.agent.id, chat_id=self.chat_id, error=str(exc))
            await self._execute(None, turn.fail(failure_text(self.agent.label, exc), AGENT_FAILED))
            raise
        finally:
            answered.set()
            for scope in self.verdicts:
                scope.cancel()
            self.verdicts.clear()
        self.ended_at = trio.current_time()
        self.turn = self.deliver = None
        self.deliveries.done()

    def _during_turn(self, turn: Turn, item: Any, conn: AgentConnection) -> list[Action]:
        now = trio.current_time()
        match item:
            case None:
                return turn.tick(now)
            case _Frame(conn=c, frame=frame) if c is conn:
                return turn.frame(frame, now)
            case _SocketEnded(conn=c, error=error) if c is conn:
                raise error
            case _Decided(key=key, approved=approved):
                return turn.decided(key, approved)
            case Deliver():
                if not self.deliveries.offer(item.event_id, item):
                    self.ctx.log.info("connection.repeated_delivery", event_id=item.event_id)
                return []
            case _Stopping():
                self.stopping = True
                return turn.fail(INTERRUPTED, INTERRUPTED_KIND)
            case _Frame() | _SocketEnded():
                return []
        self.ctx.log.warning("connection.unknown_message", message=type(item).__name__)
        return []

    # -- performing actions ------------------------------------------------------

    async def _execute(self, conn: AgentConnection | None, actions: list[Action]) -> None:
        deliver = self.deliver
        assert deliver is not None
        for action in actions:
            match action:
                case Show(parts=parts):
                    self._count_first_output()
                    await self._tell_outbox(self.bot.store.enqueue(self._rows(deliver, parts)))
                case Say(kind=kind, cause=cause, body=body, error=error):
                    item = notice(deliver.room_id, kind, cause, body, source=deliver.event_id, done=False, error=error)
                    await self._tell_outbox(self.bot.store.enqueue([item]))
                case Ask():
                    await self._ask(conn, deliver, action)
                case Reply(request_id=request_id, approved=approved) if conn is not None:
                    # This chat's own socket, as above.
                    await conn.send_confirm_response(request_id, approved)
                case Fetch(number=number, path=path):
                    await self._send_file(deliver, number, path)
                case Finish(parts=parts, error=error):
                    if error is None and self.turn_started_at is not None:
                        self._count_first_output()
                        self.bot.counters.turn_duration.observe(trio.current_time() - self.turn_started_at)
                    self.turn_started_at = None
                    await self._finish(deliver, parts, error)
                case Log(event=event, level=level, fields=fields):
                    getattr(self.ctx.log, level)(event, chat_id=self.chat_id, **dict(fields))

    def _count_first_output(self) -> None:
        """The turn latency to its first output, once per turn (answers that
        fail before any output are not counted: their time is a timeout's)."""
        if self.turn_started_at is not None and not self.first_shown:
            self.first_shown = True
            self.bot.counters.turn_first_token.observe(trio.current_time() - self.turn_started_at)

    def _rows(self, deliver: Deliver, parts: Any, *, done: bool = False, error: str | None = None) -> list[OutboxItem]:
        """Outbox rows for stream actions.

        A part's first post has a transaction id of the message and part
        alone, so the homeserver posts it once however often it is retried.
        Everything after it is an edit with an id scoped to this boot: after
        a restart the answer is written again, and its edits must not be
        taken for the earlier run's edits of the same number. For the same
        reason a part that an earlier run already posted is not posted again
        (that row exists, and would be ignored): it is edited.
        """
        rows = []
        boot = self.bot.store.boot_id
        for action in parts:
            post_txn = txn_id("answer", deliver.event_id, str(action.part_no))
            content = {**contents.text(action.body), SOURCE_KEY: deliver.event_id}
            if done:
                content[DONE_KEY] = True
                if error is not None:
                    content[ERROR_KEY] = error
            if action.edit_no == 0 and not self.bot.store.has_send(post_txn):
                rows.append(OutboxItem(0, post_txn, deliver.room_id, "m.room.message", content))
            else:
                edit_txn = txn_id("edit", deliver.event_id, boot, str(action.part_no), str(action.edit_no))
                rows.append(OutboxItem(0, edit_txn, deliver.room_id, "m.room.message", content, replaces_txn=post_txn))
        return rows

    async def _finish(self, deliver: Deliver, parts: Any, error: str | None) -> None:
        """End the turn: final sends and "handled" in one transaction, then tell the room."""
        store = self.bot.store
        if error is not None and store.is_handled(deliver.event_id):
            # Stopped between recording the answer and telling the room: the
            # answer stands; only the room has yet to hear.
            queued: list[OutboxItem] = []
        else:
            queued = store.finish(deliver.event_id, self._rows(deliver, parts, done=True, error=error))
        await self._withdraw_confirmations(deliver.room_id)
        await self._tell_outbox(queued)
        try:
            # The room serves one room; its mailbox takes one TurnDone per turn.
            await deliver.room.send(TurnDone(deliver.event_id))
        except ActorError:
            # The room is stopped (shutting down) or full: it reads the store
            # when it starts again, where this turn is already handled.
            self.ctx.log.info("connection.room_not_told", event_id=deliver.event_id)

    async def _tell_outbox(self, queued: list[OutboxItem]) -> None:
        # Never waits (tell_outbox uses send_nowait): the rows are in the
        # store already, which the outbox rescans if this message is lost.
        await tell_outbox(self.ctx, queued)

    async def _fail_all(self, marker: str, error: str) -> None:
        """Fail the turn in progress and every turn waiting, each with ``marker``."""
        if self.turn is not None and self.deliver is not None and not self.turn.finished:
            await self._execute(None, self.turn.fail(marker, error))
        self.turn = None
        while True:
            try:
                item = self.inputs.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, Deliver):
                self.deliveries.offer(item.event_id, item)
        self.deliveries.done()
        for waiting in self.deliveries.drain():
            self.deliver = waiting
            await self._execute(None, Turn(self.settings, waiting.event_id).fail(marker, error))
        self.deliver = None

    # -- typing, confirmations, files ------------------------------------------------

    async def _show_typing(self, room_id: str, answered: trio.Event) -> None:
        """Show the bot typing while an answer takes a while.

        Runs beside the turn, not in it: a quick answer sends no typing at
        all (each typing change wakes every member's sync, which costs the
        homeserver more than the answer), a request in flight is never cut
        off, and "stopped typing" is not on the way to the next message. A
        homeserver that fails it changes nothing (``quietly``).
        """
        with trio.move_on_after(self.timing.typing_delay):
            await answered.wait()
        if answered.is_set():
            return
        client = self.bot.client
        while not answered.is_set():
            await quietly(client.typing(room_id, True, timeout_ms=30_000), self.ctx.log, "connection.typing")
            with trio.move_on_after(20):
                await answered.wait()
        await quietly(client.typing(room_id, False), self.ctx.log, "connection.typing")

    async def _ask(self, conn: AgentConnection | None, deliver: Deliver, ask: Ask) -> None:
        """Make the confirmation a record of the node's approvals (its prompt
        is the gate's to post), then wait for its verdict beside the turn."""
        assert self.turn is not None
        binding = self.bot.store.binding(deliver.room_id)
        record: Approval | None = None
        if binding is not None:
            confirm = Confirm(
                confirmation_id(deliver.event_id, self.settings.namespace, ask.number, ask.action, ask.details),
                self.agent.id, deliver.room_id, binding.owner, ask.action, ask.details, self.timing.confirmation_timeout,
            )
            try:
                # A call, but it cannot block a loop serving others: this
                # actor serves one chat, and the gate never calls anyone back.
                record = await self.ctx.registry.lookup(APPROVALS_PATH).call(confirm)
            except (ActorError, CallError) as exc:
                self.ctx.log.warning("connection.gate_unavailable", chat_id=self.chat_id, error=str(exc))
        if record is None:
            await self._execute(conn, self.turn.not_asked(ask.key))
        elif record.final:
            # Decided already: the same turn replayed, and the owner answered meanwhile.
            await self._execute(conn, self.turn.decided(ask.key, record.status is Status.APPROVED))
        else:
            scope = trio.CancelScope()
            self.verdicts.append(scope)
            self.nursery.start_soon(self._await_verdict, ask.key, record.id, scope)

    async def _await_verdict(self, key: str, approval_id: str, scope: trio.CancelScope) -> None:
        """Long-poll the gate until the record is final, then hand the verdict to the turn.

        Cancelled when the turn ends. While the gate is between incarnations
        it is asked again a moment later; if it never answers, the turn says
        no itself after the deadline (``turn.VERDICT_GRACE``)."""
        with scope:
            while True:
                try:
                    record = await self.ctx.registry.lookup(APPROVALS_PATH).call(
                        Read(approval_id, MAX_WAIT_S), timeout=MAX_WAIT_S + 10
                    )
                except NotFound:
                    approved = False
                    break
                except (ActorError, CallError):
                    await trio.sleep(1.0)  # the gate is restarting: ask it again
                    continue
                if record.final:
                    approved = record.status is Status.APPROVED
                    break
            # Our own loop's channel: waits only while this actor is busy.
            await self.send_input.send(_Decided(key, approved))

    async def _withdraw_confirmations(self, room_id: str) -> None:
        """The turn is over: the agent's confirmations still pending in the room
        are withdrawn (nobody would hear their answer). Asked only when the
        store shows some, so a turn without one costs no call."""
        approvals = self.bot.approvals
        if approvals is None or not any(
            r.room_id == room_id and r.agent_id == self.agent.id and r.source is Source.AGENT for r in approvals.pending()
        ):
            return
        try:
            # Cannot block others: as in _ask.
            await self.ctx.registry.lookup(APPROVALS_PATH).call(Withdraw(room_id, self.agent.id))
        except (ActorError, CallError) as exc:
            # They expire at their deadline instead (default deny).
            self.ctx.log.info("connection.confirmations_not_withdrawn", error=str(exc))

    async def _send_file(self, deliver: Deliver, number: int, path: str) -> None:
        cause = (deliver.event_id, str(number))
        try:
            loaded: AgentFile = await trio.to_thread.run_sync(
                load_agent_file, self.agent.workspace_path, path, self.agent.max_file_bytes
            )
            mxc = await self.bot.client.upload(loaded.data, loaded.mimetype, loaded.name)
        except UnsafeAgentFile as exc:
            self.ctx.log.warning("connection.file_refused", agent=self.agent.id, reason=str(exc))
            item = notice(deliver.room_id, "file", cause, f"⚠ The agent tried to send a file I refused: {exc}",
                          source=deliver.event_id, done=False, error=ERROR_FILE)
        except MatrixFailure as exc:
            # The homeserver's failure, not the agent's: the turn goes on.
            self.ctx.log.warning("connection.file_upload_failed", agent=self.agent.id, error=str(exc))
            item = notice(deliver.room_id, "file", cause,
                          "⚠ The agent sent a file, but the homeserver did not take the upload; "
                          "ask the agent to send it again later.",
                          source=deliver.event_id, done=False, error=ERROR_HOMESERVER)
        except OSError as exc:
            self.ctx.log.warning("connection.file_failed", agent=self.agent.id, error=str(exc))
            item = notice(deliver.room_id, "file", cause, "⚠ I could not read a file the agent sent.",
                          source=deliver.event_id, done=False, error=ERROR_FILE)
        else:
            content = {
                **contents.file_message(mxc, loaded.name, mimetype=loaded.mimetype, size=loaded.size, msgtype=loaded.msgtype),
                SOURCE_KEY: deliver.event_id,
            }
            item = OutboxItem(0, txn_id("file", *cause), deliver.room_id, "m.room.message", content)
        await self._tell_outbox(self.bot.store.enqueue([item]))
