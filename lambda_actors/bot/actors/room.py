"""The room actor: one per Matrix room, started on demand, keyed by room id.

It executes the room's rules (``bot/room_rules.py``, a pure machine whose
module docstring lists every rule, each with a unit test): for each event it
reads what the rules need (:class:`~lambda_actors.bot.room_rules.RoomFacts`),
asks them, and performs the actions they return. Everything that decides
lives there; what is here is I/O: the store, the homeserver, the registry.

**The inbox is its queue.** The sync actor stores events and sends
:class:`Wake`; the room reads its unhandled events from the store, in order.
An event is marked handled together with the replies it caused
(``Store.finish``), so a crash at any point replays the event and the replies
are posted once (their transaction ids come from the event id).

**Poison.** Handling each event runs inside a handler that records a crash
against the event (``Store.record_failure``, with the exception and its
traceback) and re-raises, so the supervisor still sees the crash and
restarts the room. The rules set an event that crashed the room
``POISON_LIMIT`` times aside. A homeserver that is away, or asks us to slow
down, is not the event's fault and is not counted.

**One turn at a time.** A user message goes to the agent as a turn; the room
delivers the next one only when the connection reports :class:`TurnDone`.
The room monitors the connection holding the turn (``ctx.monitor``), with
no polling: when that connection's incarnation ends (``Down``) the rules
decide: answered already, the turn is over (its ``TurnDone`` may have died
with it); restarting, the next incarnation is watched (the message may be in
its mailbox); stopped for good, the turn ends with an error instead of
waiting for ever.

**Replay-safe creation.** Every room the bot creates (a Space, a chat) carries
a marker derived from what caused it in its initial state; before creating,
the room looks for a joined room with that marker, so a crash between
creating a room and recording it never makes a second one.

Sends and why none can block a loop that serves others: this actor serves
one room. It sends to its room's connection (one per agent chat, which serves
this room alone) and to the outbox (whose mailbox is large and drained by a
loop that only dispatches). If either is slow, only this room waits.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from typing import Any

import trio

from ...approvals.gate import Answer, Ignored
from ...approvals.matrix_views import prompt_txn
from ...approvals.messages import Answered
from ...matrix import events as ev
from ...matrix.errors import HomeserverUnavailable, InvalidToken, MatrixError, MatrixFailure, MediaTooLarge, RateLimited
from ...runtime.context import ActorContext
from ...runtime.errors import ActorError, CallError
from ...runtime.monitors import Down
from ...runtime.state import Status
from .. import room_rules as rules
from ..files import UnsafeAgentFile, remove_incoming, save_incoming
from ..store import InboxEvent, OutboxItem, RoomBinding
from . import creation
from .connection import connection_address
from .outbox import tell_outbox
from .services import (
    AGENTS_PATH,
    APPROVALS_PATH,
    ERROR_UNDELIVERABLE,
    SERVICE_STATE,
    BotServices,
    notice,
    quietly,
)
from .turns import Deliver, TurnDone

#: Marks an invitation in the inbox (invites have no timeline event of their own).
INVITE_TYPE = "org.lambda.invite"

# What executing one event's actions can end in.
_DONE, _WAIT, _AGAIN = "done", "wait", "again"
# How often one event may be asked again (members read, binding changed):
# twice is all the rules need; more would be a loop.
_MAX_ASKS = 4


@dataclass(frozen=True)
class Wake:
    """New events for this room are in the inbox."""


async def room_actor(ctx: ActorContext, bot: BotServices, room_id: str) -> None:
    room = _Room(ctx, bot, room_id)
    await room.process()
    async for msg in ctx.mailbox:
        if isinstance(msg, TurnDone):
            room.turn_done(msg.event_id)
        elif isinstance(msg, Down):
            await room.connection_down(msg)
        elif not isinstance(msg, Wake):
            ctx.log.warning("room.unknown_message", message=type(msg).__name__)
        await room.process()


class _Room:
    def __init__(self, ctx: ActorContext, bot: BotServices, room_id: str) -> None:
        self.ctx = ctx
        self.bot = bot
        self.store = bot.store
        self.room_id = room_id
        self.rules = rules.RoomRules(bot.agents, faults=bot.faults)
        #: The connection holding the turn in flight (monitored), if any.
        self.in_flight_to: Any = None
        #: The room's members, when the rules asked for them (NeedMembers).
        self._asked_members: frozenset[str] | None = None
        self._asked_service = False

    # -- the event loop over the inbox ------------------------------------------

    async def process(self) -> None:
        """Handle unhandled events in order, as far as the turn in flight allows."""
        waiting = False
        for item in self.store.unhandled(self.room_id):
            event = self._parse(item)
            if not rules.admit(item.event_id, event, self.rules.in_flight, waiting):
                continue
            waiting = await self._guarded(item, event) == _WAIT or waiting

    def _parse(self, item: InboxEvent) -> Any:
        raw = item.event
        if raw.get("type") == INVITE_TYPE:
            parsed = ev.parse_sync(
                {"next_batch": "", "rooms": {"invite": {self.room_id: raw.get("invite", {})}}}, self.bot.user_id
            )
            return parsed.invites[0] if parsed.invites else None
        events = ev.parse_events(self.room_id, [raw])
        return events[0] if events else None

    async def _guarded(self, item: InboxEvent, event: Any) -> str:
        """Handle one event; a crash is recorded against it, then re-raised."""
        try:
            return await self._handle(item, event)
        except Exception as exc:
            if _charged_to_event(exc):
                count = self.store.record_failure(
                    item.event_id, self.room_id, f"{type(exc).__name__}: {exc}", traceback.format_exc()
                )
                self.ctx.log.warning(
                    "room.event_crashed", event_id=item.event_id, failures=count, error=f"{type(exc).__name__}: {exc}"
                )
            raise

    async def _handle(self, item: InboxEvent, event: Any) -> str:
        members: frozenset[str] | None = None
        self._asked_service = False
        for _ in range(_MAX_ASKS):
            facts = replace(self._facts(item, event, members), service_room=self._asked_service)
            outcome = await self._execute(item, self.rules.handle(event, facts, time.time()))
            if outcome != _AGAIN:
                return outcome
            if self._asked_members is not None:
                # Read once per event (an empty set when the homeserver
                # would not tell: then the room is not adopted).
                members = self._asked_members
        raise RuntimeError(f"the room rules asked again {_MAX_ASKS} times for event {item.event_id}")

    def _facts(self, item: InboxEvent, event: Any, members: frozenset[str] | None) -> rules.RoomFacts:
        """What the rules need for this event, read from the store and the tree (only what they need)."""
        store = self.store
        binding = store.binding(self.room_id)
        facts = rules.RoomFacts(
            room_id=self.room_id,
            bot_user_id=self.bot.user_id,
            binding=binding,
            failures=store.failures(item.event_id),
            members=members,
            parked=self._parked(binding),
        )
        # The owner whose rooms matter: the inviter for an invitation.
        owner = binding.owner if binding is not None and not isinstance(event, ev.Invite) else getattr(event, "sender", None)
        if owner is None or event is None:
            return facts
        needed = rules.facts_needed(event)
        changes: dict[str, Any] = {}
        if rules.OWNER_ROOMS in needed:
            changes["owner_rooms"] = tuple(store.user_rooms(owner))
        if rules.APPROVALS in needed and self.bot.approvals is not None:
            changes["approvals"] = tuple(
                rules.ApprovalPrompt(r.id, r.action, store.sent_event_id(prompt_txn(r.id)))
                for r in self.bot.approvals.pending()
                if r.room_id == self.room_id and r.approver == getattr(event, "sender", None)
            )
        if rules.STAGED in needed:
            changes["staged"] = tuple(store.staged(self.room_id))
            changes["staged_bytes"] = store.staged_bytes(self.room_id)
        if rules.ROOMS_CREATED in needed:
            now = time.time()
            created = store.rooms_created_since(owner, now - rules.ROOM_WINDOW)
            changes["rooms_created_last_hour"] = created
            if created >= self.bot.agents.limits.rooms_per_user_per_hour:
                changes["room_slot_free_at"] = self._room_slot_free_at(owner, now)
        return replace(facts, **changes)

    def _parked(self, binding: RoomBinding | None) -> dict[str, float]:
        """The room's agent, if it is parked, with the wall-clock time of its next try."""
        if binding is None:
            return {}
        try:
            state = self.ctx.registry.supervisor(AGENTS_PATH).child_state(binding.agent_id)
        except LookupError:
            return {}
        if state.status is Status.PARKED:
            return {binding.agent_id: time.time() + (state.retry_in or 0)}
        return {}

    def _room_slot_free_at(self, owner: str, now: float) -> float:
        """When the oldest creation of the last hour leaves the window (to the minute)."""
        limit = self.bot.agents.limits.rooms_per_user_per_hour
        for minute in range(1, 61):
            if self.store.rooms_created_since(owner, now - rules.ROOM_WINDOW + 60 * minute) < limit:
                return now + 60 * minute
        return now + rules.ROOM_WINDOW

    # -- executing actions -----------------------------------------------------------

    async def _execute(self, item: InboxEvent, actions: list[Any]) -> str:
        self._asked_members = None
        for action in actions:
            match action:
                case rules.Finish(says=says):
                    await self._finish(item.event_id, [self._notice(item, s) for s in says])
                case rules.Post(say=say):
                    # Why this cannot block others: see the module doc (the outbox).
                    await tell_outbox(self.ctx, self.store.enqueue([self._notice(item, say)]))
                case rules.SetAside(say=say):
                    await self._set_aside(item, say)
                case rules.Wait():
                    return _WAIT
                case rules.NeedMembers():
                    try:
                        self._asked_members = frozenset(await self.bot.client.joined_members(self.room_id))
                        self._asked_service = await self.bot.client.get_state(self.room_id, SERVICE_STATE) is not None
                    except MatrixError:
                        self._asked_members = frozenset()
                    return _AGAIN
                case rules.Again():
                    return _AGAIN
                case rules.Log(level=level, event=name, fields=fields):
                    getattr(self.ctx.log, level)(name, **fields)
                case rules.Join():
                    try:
                        await self.bot.client.join(self.room_id)
                    except MatrixError as exc:
                        # Withdrawn, or the room is gone: nothing to onboard.
                        self.ctx.log.warning("room.join_failed", error=str(exc))
                        await self._finish(item.event_id)
                        return _DONE
                case rules.Leave():
                    await quietly(self.bot.client.leave(self.room_id), self.ctx.log, "room.leave")
                case rules.SayNow(say=say):
                    # The refusal must arrive before we leave, so it is sent
                    # here and not through the outbox (which would race the leave).
                    refusal = self._notice(item, say)
                    try:
                        await self.bot.client.send(self.room_id, "m.room.message", refusal.content, refusal.txn_id)
                    except MatrixError as exc:
                        self.ctx.log.warning("room.refusal_not_sent", error=str(exc))
                case rules.Onboard():
                    await self._onboard(item, action)
                case rules.CreateChat(owner=owner, agent_id=agent_id, name=name, marker=marker):
                    try:
                        space_id = await self._ensure_space(owner)
                        created = await self._create_chat(owner, agent_id, space_id, name, marker)
                    except MatrixError as exc:
                        if not _refused(exc):
                            raise
                        await self._refused(item, "create the chat", exc)
                        return _DONE
                    await self._finish(item.event_id, [self._notice(item, rules.chat_created(created.name))])
                case rules.Bind(binding=binding, fresh_context=fresh):
                    if fresh:
                        binding = replace(binding, chat_id=self.store.new_chat_id(self.room_id))
                    await self._bind(binding)
                case rules.RenameRoom(name=name):
                    try:
                        await self.bot.client.put_state(self.room_id, "m.room.name", {"name": name})
                    except MatrixError as exc:
                        if not _refused(exc):
                            raise
                        await self._refused(item, "rename this chat", exc)
                        return _DONE
                case rules.Unstage(seqs=seqs):
                    await self._unstage(seqs)
                case rules.Download():
                    await self._download(item, action)
                case rules.AskApprovals(answer=answer):
                    await self._ask_approvals(item, answer)
                case rules.Deliver():
                    await self._deliver(item, action)
                case _:
                    raise TypeError(f"the room cannot execute {action!r}")
        return _DONE

    def _notice(self, item: InboxEvent, say: rules.Say, room_id: str | None = None) -> OutboxItem:
        return notice(
            room_id or self.room_id,
            say.kind,
            (item.event_id,),
            say.body,
            source=item.event_id,
            done=say.done,
            error=say.error,
        )

    async def _finish(self, event_id: str, sends: list[OutboxItem] | tuple[OutboxItem, ...] = ()) -> None:
        # Why this cannot block others: see the module doc (the outbox).
        await tell_outbox(self.ctx, self.store.finish(event_id, sends))

    async def _refused(self, item: InboxEvent, what: str, exc: MatrixError) -> None:
        self.ctx.log.warning("room.homeserver_refused", what=what, error=str(exc))
        await self._finish(item.event_id, [self._notice(item, rules.homeserver_refused(what, exc.errcode))])

    async def _set_aside(self, item: InboxEvent, say: rules.Say) -> None:
        queued = self.store.set_aside(item.event_id, [self._notice(item, say)])
        letter = next((d for d in self.store.dead_letters(limit=20) if d.event_id == item.event_id), None)
        # Logged once, with the trace: the crashes before it were logged short.
        self.ctx.log.error(
            "room.event_set_aside",
            event_id=item.event_id,
            sender=letter.sender if letter else None,
            failures=letter.failures if letter else None,
            error=letter.error if letter else None,
            trace=letter.trace if letter else None,
        )
        # Cannot block others: only this room waits if the outbox is slow.
        await tell_outbox(self.ctx, queued)

    # -- the turn in flight ----------------------------------------------------------

    def turn_done(self, event_id: str) -> None:
        if self.rules.turn_done(event_id):
            self._unwatch()

    async def connection_down(self, down: Down) -> None:
        """An incarnation of the connection holding our turn ended: the rules decide."""
        target = self.in_flight_to
        if target is None or down.path != target.path or self.rules.in_flight is None:
            return  # an earlier turn's connection, already done with
        event_id = self.rules.in_flight
        lost = self.rules.turn_lost(self.store.is_handled(event_id), gone_for_good=target.stopped)
        if isinstance(lost, rules.KeepWatching):
            # Restarting: watch the incarnation that takes its mailbox next.
            self.ctx.monitor(target)
            return
        self.in_flight_to = None
        if lost is not None:
            event_id, say = lost
            self.ctx.log.warning("room.turn_lost_its_connection", event_id=event_id, reason=down.reason)
            item = InboxEvent(0, event_id, self.room_id, {})
            await self._finish(event_id, [self._notice(item, say)])

    def _watch(self, address: Any) -> None:
        self._unwatch()
        self.in_flight_to = address
        self.ctx.monitor(address)

    def _unwatch(self) -> None:
        if self.in_flight_to is not None:
            self.ctx.demonitor(self.in_flight_to)
            self.in_flight_to = None

    async def _deliver(self, item: InboxEvent, action: rules.Deliver) -> None:
        attachments = self.store.start_turn(item.event_id, self.room_id)
        self.rules.turn_started(item.event_id)
        if attachments is None:
            # Delivered by this run of the bot already (this room actor
            # restarted); its answer is coming, unless its connection is
            # gone, which the monitor tells at once ("noproc").
            address = self.ctx.registry.get(("chat", action.agent_id, action.chat_id))
            if address is None:
                lost = self.rules.turn_lost(self.store.is_handled(item.event_id), gone_for_good=True)
                if isinstance(lost, tuple):
                    self.ctx.log.warning("room.turn_lost_its_connection", event_id=item.event_id, reason="noproc")
                    await self._finish(item.event_id, [self._notice(item, lost[1])])
                return
            self._watch(address)
            return
        deliver = Deliver(item.event_id, self.room_id, action.text, tuple(attachments), self.ctx.address)
        for _ in range(2):
            # A connection that just closed for being idle refuses the
            # message; a fresh one is started the second time round.
            try:
                address = connection_address(self.ctx, action.agent_id, action.chat_id, self.bot)
                # Watched before the send, so an end right after it is seen.
                self._watch(address)
                # Cannot block others: this connection serves this room's chat
                # alone, and holds at most this one Deliver (one turn at a time).
                await address.send(deliver)
            except ActorError:
                self._unwatch()
                continue
            return
        self.rules.turn_done(item.event_id)
        await self._finish(item.event_id, [self._notice(item, action.undeliverable)])

    # -- approvals ----------------------------------------------------------------------

    async def _ask_approvals(self, item: InboxEvent, answer: Answer) -> None:
        """The node's approvals actor judges the answer (and edits the prompt,
        or asks which one); the event is handled once it has."""
        try:
            # A call, but it cannot block a loop serving others: the approvals
            # actor never calls rooms back, and this room serves only itself.
            verdict = await self.ctx.registry.lookup(APPROVALS_PATH).call(Answered(self.room_id, item.event_id, answer))
        except (ActorError, CallError):
            say = rules.Say("reply", _ANSWER_NOT_RECORDED, error=ERROR_UNDELIVERABLE)
            await self._finish(item.event_id, [self._notice(item, say)])
            return
        if verdict == Ignored("too late"):
            await self._finish(item.event_id, [self._notice(item, rules.Say("reply", _TOO_LATE))])
            return
        self.ctx.log.info("room.approval_answer", verdict=type(verdict).__name__, event_id=item.event_id)
        await self._finish(item.event_id)

    # -- files ----------------------------------------------------------------------------

    async def _download(self, item: InboxEvent, action: rules.Download) -> None:
        agent = self.bot.agents.agent(action.agent_id)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(action.origin_server_ts / 1000))
        try:
            download = await self.bot.client.download(action.url, max_bytes=action.max_bytes)
            relative = await trio.to_thread.run_sync(save_incoming, agent.workspace_path, action.filename, download.data, stamp)
        except HomeserverUnavailable as exc:
            if not isinstance(exc.__cause__, MatrixError):
                raise  # the homeserver is away: try again when it is back
            # It answered, with a 5xx: the file (remote media, say) cannot be fetched.
            say = rules.file_refused(action.filename, "the homeserver could not fetch it")
        except MediaTooLarge:
            say = rules.file_refused(action.filename, f"it is larger than the {rules.size_text(action.max_bytes)} this chat can take now")
        except MatrixError as exc:
            say = rules.file_refused(action.filename, f"the homeserver refused to give it to me ({exc.errcode})")
        except ValueError:
            say = rules.file_refused(action.filename, "its address is malformed")
        except UnsafeAgentFile as exc:
            say = rules.file_refused(action.filename, str(exc))
        except OSError as exc:
            say = rules.file_refused(action.filename, f"it could not be saved ({exc.strerror or type(exc).__name__})")
        else:
            self.store.stage(self.room_id, relative, action.filename, size=len(download.data))
            say = rules.file_staged(action.filename, len(self.store.staged(self.room_id)))
            await self._finish(item.event_id, [self._notice(item, say)])
            return
        self.ctx.log.warning("room.file_refused", filename=action.filename, reason=say.body)
        await self._finish(item.event_id, [self._notice(item, say)])

    async def _unstage(self, seqs: tuple[int, ...] | None) -> None:
        removed = self.store.unstage(self.room_id, seqs)
        binding = self.store.binding(self.room_id)
        try:
            agent = self.bot.agents.agent(binding.agent_id) if binding else None
        except KeyError:
            agent = None
        if agent is None or not removed:
            return
        for staged in removed:
            try:
                await trio.to_thread.run_sync(remove_incoming, agent.workspace_path, staged.path)
            except (UnsafeAgentFile, ValueError, OSError) as exc:
                # The row is gone either way; the file stays for the operator.
                self.ctx.log.warning("room.staged_file_not_removed", path=staged.path, error=str(exc))

    # -- invitations and creating rooms ---------------------------------------------------

    async def _onboard(self, item: InboxEvent, action: rules.Onboard) -> None:
        agent = self.bot.agents.agent(action.agent_id)
        created = None
        try:
            space_id = await self._ensure_space(action.owner)
            if action.create_first_chat:
                created = await self._create_chat(
                    action.owner, agent.id, space_id, None, rules.creation_marker("first-chat", action.owner)
                )
        except MatrixError as exc:
            if not _refused(exc):
                raise
            # The direct chat still works; the Space and chat can come with !new.
            self.ctx.log.warning("room.onboarding_refused", owner=action.owner, error=str(exc))
        if action.bind_here and self.store.binding(self.room_id) is None:
            chat_id = self.store.new_chat_id(self.room_id)
            await self._bind(RoomBinding(self.room_id, action.owner, agent.id, chat_id, action.room_name))
        say = rules.welcome(
            agent.label, action.owner, created.name if created else None, self.store.user_rooms(action.owner), action.encrypted
        )
        await self._finish(item.event_id, [self._notice(item, say)])

    # Making rooms is shared with the node's registry (bot/actors/creation.py).

    async def _ensure_space(self, owner: str) -> str:
        return await creation.ensure_space(self.ctx, self.bot, owner)

    async def _create_chat(self, owner: str, agent_id: str, space_id: str, name: str | None, marker: str) -> RoomBinding:
        return await creation.create_chat(self.ctx, self.bot, owner, agent_id, space_id, name, marker)

    async def _bind(self, binding: RoomBinding, *, created_at: float | None = None) -> None:
        await creation.bind(self.ctx, self.bot, binding, created_at=created_at)


def _charged_to_event(exc: BaseException) -> bool:
    """Whether a crash counts against the event being handled (towards setting it aside).

    A homeserver that is away, asks us to slow down, or no longer takes our
    token fails every event alike: retried, never charged to the event.
    """
    return not isinstance(exc, (HomeserverUnavailable, RateLimited, InvalidToken))


def _refused(exc: MatrixError) -> bool:
    """A refusal for good (4xx), not a homeserver asking us to wait or to log in again."""
    return exc.status < 500 and not isinstance(exc, (RateLimited, InvalidToken))


_ANSWER_NOT_RECORDED = "⚠ I could not record your answer just now; please answer again in a moment."
_TOO_LATE = "That request expired before your answer: no answer by its deadline means no."
