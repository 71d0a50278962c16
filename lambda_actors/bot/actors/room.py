"""The room actor: one per Matrix room, started on demand, keyed by room id.

It owns everything about its room: onboarding when the bot is invited, the
commands of SPEC section 6, staged files, confirmations, and handing user
messages to the room's agent connection.

**The inbox is its queue.** The sync actor stores events and sends
:class:`Wake`; the room reads its unhandled events from the store, in order.
An event is marked handled together with the replies it caused
(``Store.finish``), so a crash at any point replays the event and the replies
are posted once (their transaction ids come from the event id).

**One turn at a time.** A user message goes to the agent as a turn; the room
delivers the next one only when the connection reports :class:`TurnDone`.
So no message waits inside an actor's memory, where a crash would lose it:
messages not yet delivered are simply unhandled events in the inbox. Events
before the next user message (commands, files) are handled at once;
confirmation answers (``!yes``, ``!no``, ✅/❌) even pass a waiting message,
since the turn in flight may be waiting for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import trio

from .. import commands as cmd
from ...runtime.errors import ActorError
from ..config import AgentConfig
from ..files import UnsafeAgentFile, save_incoming
from ..store import InboxEvent, OutboxItem, RoomBinding
from ...matrix import events as ev
from ...matrix.errors import MatrixError
from ...runtime.state import Status
from .connection import connection_address
from .outbox import tell_outbox
from .turns import ConfirmAnswer, Deliver, TurnDone
from .services import AGENTS_PATH, BINDING_STATE, SPACE_STATE, BotServices, notice

#: Marks an invitation in the inbox (invites have no timeline event of their own).
INVITE_TYPE = "org.lambda.invite"

#: What ``_handle`` returns for a user message that must wait for the turn in flight.
_WAIT = object()

APPROVE_KEYS = frozenset({"✅", "✔️", "👍"})
DENY_KEYS = frozenset({"❌", "✖️", "👎"})


@dataclass(frozen=True)
class Wake:
    """New events for this room are in the inbox."""


async def room_actor(ctx, bot: BotServices, room_id: str) -> None:
    room = _Room(ctx, bot, room_id)
    await room.process()
    while True:
        msg = None
        with trio.move_on_after(bot.timing.turn_check_interval if room.in_flight else math.inf):
            try:
                msg = await ctx.mailbox.receive()
            except trio.EndOfChannel:
                return  # we are being stopped
        if msg is None:
            await room.check_in_flight()
            continue
        if isinstance(msg, TurnDone):
            if room.in_flight == msg.event_id:
                room.in_flight = room.in_flight_to = None
        elif not isinstance(msg, Wake):
            ctx.log.warning("room.unknown_message", message=type(msg).__name__)
        await room.process()


class _Room:
    def __init__(self, ctx, bot: BotServices, room_id: str) -> None:
        self.ctx = ctx
        self.bot = bot
        self.store = bot.store
        self.room_id = room_id
        #: The user message whose turn is with the agent now, and where it went.
        self.in_flight: str | None = None
        self.in_flight_to: Any = None

    # -- the event loop over the inbox ------------------------------------------

    async def process(self) -> None:
        """Handle unhandled events in order, as far as the turn in flight allows.

        While a turn is with the agent, events are still handled in order up
        to the next user message, which waits for the turn to end; past that
        only confirmation answers are taken, since they are what the turn in
        flight may be waiting for.
        """
        waiting = False
        for item in self.store.unhandled(self.room_id):
            if item.event_id == self.in_flight:
                continue
            event = self._parse(item)
            if waiting and not self._is_confirmation_answer(event):
                continue
            waiting = await self._handle(item, event) is _WAIT or waiting

    def _parse(self, item: InboxEvent) -> Any:
        raw = item.event
        if raw.get("type") == INVITE_TYPE:
            parsed = ev.parse_sync(
                {"next_batch": "", "rooms": {"invite": {self.room_id: raw.get("invite", {})}}}, self.bot.user_id
            )
            return parsed.invites[0] if parsed.invites else None
        events = ev.parse_events(self.room_id, [raw])
        return events[0] if events else None

    def _is_confirmation_answer(self, event: Any) -> bool:
        if isinstance(event, ev.Reaction):
            return True
        if isinstance(event, (ev.TextMessage, ev.Command)):
            return isinstance(cmd.parse_command(_body(event)), (cmd.Yes, cmd.No))
        return False

    async def _handle(self, item: InboxEvent, event: Any) -> object:
        """Handle one event; :data:`_WAIT` when it is a user message that must
        wait for the turn in flight (it stays unhandled until then)."""
        if event is None or getattr(event, "sender", None) == self.bot.user_id:
            await self._finish(item.event_id)
            return None
        if isinstance(event, ev.Invite):
            await self._on_invite(item, event)
            return None
        binding = self.store.binding(self.room_id)
        if binding is None and isinstance(event, (ev.TextMessage, ev.Command, ev.FileMessage)):
            binding = await self._adopt_direct_chat(event.sender)
        if binding is None or event.sender != binding.owner:
            # Not a chat room, or not its owner talking: nothing for the agent.
            await self._on_unbound(item, event, binding)
            return None
        if isinstance(event, ev.OtherEvent) and event.event_type == "m.room.encryption":
            await self._finish(item.event_id, [self._notice(item, "encrypted", _ENCRYPTED)])
            return None
        if isinstance(event, ev.Reaction):
            await self._on_reaction(item, event, binding)
            return None
        if isinstance(event, ev.FileMessage):
            await self._on_file(item, event, binding)
            return None
        if isinstance(event, (ev.TextMessage, ev.Command)):
            command = cmd.parse_command(_body(event))
            if command is not None:
                await self._on_command(item, command, binding)
                return None
            return await self._on_text(item, _body(event), binding)
        await self._finish(item.event_id)
        return None

    # -- helpers ----------------------------------------------------------------

    def _notice(self, item: InboxEvent, kind: str, body: str, room_id: str | None = None) -> OutboxItem:
        return notice(room_id or self.room_id, kind, (item.event_id,), body, source=item.event_id)

    async def _finish(self, event_id: str, sends: list[OutboxItem] | tuple = ()) -> None:
        await tell_outbox(self.ctx, self.store.finish(event_id, sends))

    def _agent(self, binding: RoomBinding) -> AgentConfig:
        return self.bot.agents.agent(binding.agent_id)

    def _agent_unavailable(self, agent: AgentConfig) -> str | None:
        """A message for the user when the agent is parked, else None."""
        try:
            state = self.ctx.registry.supervisor(AGENTS_PATH).child_state(agent.id)
        except LookupError:
            return None
        if state.status is Status.PARKED:
            at = datetime.now() + timedelta(seconds=state.retry_in or 0)
            return (
                f"⚠ {agent.label} is unavailable right now (it failed repeatedly); "
                f"next try at {at:%H:%M:%S}. Please send your message again after that."
            )
        return None

    # -- invitations ------------------------------------------------------------

    async def _on_invite(self, item: InboxEvent, invite: ev.Invite) -> None:
        client = self.bot.client
        agent = self.bot.agents.agent_for(invite.sender)
        if not (agent is None and _is_group(invite)):
            try:
                await client.join(self.room_id)
            except MatrixError as exc:
                # Withdrawn, or the room is gone: nothing to onboard.
                self.ctx.log.warning("room.join_failed", inviter=invite.sender, error=str(exc))
                await self._finish(item.event_id)
                return
        if agent is None:
            if _is_group(invite):
                self.ctx.log.info("room.invite_declined", inviter=invite.sender, reason="group room, unknown user")
                await _ignore_matrix_error(client.leave(self.room_id))
                await self._finish(item.event_id)
                return
            refusal = notice(
                self.room_id,
                "refusal",
                (item.event_id,),
                "Sorry, I only work for the people my operator has configured, and you are not one of them. "
                "Ask the operator to add your Matrix id if you think you should be.",
            )
            # The refusal must go out before we leave, so it is sent here and
            # not through the outbox (which would race the leave).
            try:
                sent = await client.send(self.room_id, "m.room.message", refusal.content, refusal.txn_id)
            except MatrixError as exc:
                self.ctx.log.warning("room.refusal_not_sent", error=str(exc))
            else:
                self.ctx.log.debug("room.refusal_sent", event_id=sent)
            await _ignore_matrix_error(client.leave(self.room_id))
            await self._finish(item.event_id)
            self.ctx.log.info("room.invite_refused", inviter=invite.sender)
            return
        owner = invite.sender
        space_id = await self._ensure_space(owner)
        sends: list[OutboxItem] = []
        created: str | None = None
        if not any(b.space_id for b in self.store.user_rooms(owner)):
            created = await self._create_chat(owner, agent, space_id, name=None)
        if invite.encrypted:
            sends.append(self._notice(item, "welcome", _ENCRYPTED))
        elif self.store.binding(self.room_id) is None:
            chat_id = self.store.new_chat_id(self.room_id)
            binding = RoomBinding(self.room_id, owner, agent.id, chat_id, invite.room_name or "Direct chat")
            await self._bind(binding)
        where = f" I made a first chat for you in your Space \"{_space_name(owner)}\"." if created else ""
        here = "" if invite.encrypted else " You can also talk to it right here."
        sends.append(
            self._notice(
                item,
                "welcome",
                f"Hello! I connect you to {agent.label}.{where} Every chat room is its own conversation "
                f"with the agent.{here}\n\n{cmd.HELP_TEXT}",
            )
        )
        await self._finish(item.event_id, sends)

    async def _ensure_space(self, owner: str) -> str:
        space_id = self.store.user_space(owner)
        if space_id is None:
            space_id = await self.bot.client.create_space(_space_name(owner), invite=[owner])
            await self.bot.client.put_state(space_id, SPACE_STATE, {"owner": owner})
            self.store.set_user_space(owner, space_id)
        return space_id

    async def _create_chat(self, owner: str, agent: AgentConfig, space_id: str, name: str | None) -> str:
        number = self.store.next_chat_number(owner)
        name = name or f"Chat {number}"
        client = self.bot.client
        room_id = await client.create_room(name=name, invite=[owner])
        await client.add_to_space(space_id, room_id)
        chat_id = self.store.new_chat_id(room_id)
        await self._bind(RoomBinding(room_id, owner, agent.id, chat_id, name, space_id))
        welcome = notice(
            room_id,
            "welcome",
            (room_id,),
            f"This is \"{name}\", a new conversation with {agent.label}. Write here to talk to it.\n\n{cmd.HELP_TEXT}",
        )
        await tell_outbox(self.ctx, self.store.enqueue([welcome]))
        return room_id

    async def _bind(self, binding: RoomBinding) -> None:
        self.store.bind_room(binding)
        content = {
            "owner": binding.owner,
            "agent_id": binding.agent_id,
            "chat_id": binding.chat_id,
            "name": binding.name,
            "space_id": binding.space_id,
            "archived": binding.archived,
        }
        try:
            await self.bot.client.put_state(binding.room_id, BINDING_STATE, content)
        except MatrixError as exc:
            if exc.status != 403:
                raise
            # A room someone else created (a direct chat) may not let us set
            # state; the binding then lives in the database only.
            self.ctx.log.info("room.binding_not_mirrored", room_id=binding.room_id, error=exc.errcode)

    async def _adopt_direct_chat(self, sender: str) -> RoomBinding | None:
        """Bind a direct chat with a configured user that we have no record of.

        That happens after the database was lost: a direct chat someone else
        created may not let us keep the binding in its state, so it comes
        back here, as a fresh conversation, on the owner's next message.
        """
        agent = self.bot.agents.agent_for(sender)
        if agent is None:
            return None
        try:
            members = await self.bot.client.joined_members(self.room_id)
        except MatrixError:
            return None
        if set(members) != {sender, self.bot.user_id}:
            return None
        binding = RoomBinding(self.room_id, sender, agent.id, self.store.new_chat_id(self.room_id), "Direct chat")
        await self._bind(binding)
        self.ctx.log.info("room.direct_chat_adopted", room_id=self.room_id, owner=sender)
        return binding

    async def _on_unbound(self, item: InboxEvent, event: Any, binding: RoomBinding | None) -> None:
        if binding is None and isinstance(event, (ev.TextMessage, ev.Command, ev.FileMessage)):
            # A room we are in but that is no chat (a Space, or a room we were
            # refused from): say nothing, the owner's rooms are elsewhere.
            self.ctx.log.info("room.message_in_unbound_room", sender=event.sender)
        await self._finish(item.event_id)

    # -- user messages ------------------------------------------------------------

    async def _on_text(self, item: InboxEvent, text: str, binding: RoomBinding) -> object:
        if self.in_flight is not None:
            return _WAIT
        agent = self._agent(binding)
        if binding.archived:
            await self._finish(item.event_id, [self._notice(item, "archived", _ARCHIVED)])
            return None
        unavailable = self._agent_unavailable(agent)
        if unavailable is not None:
            await self._finish(item.event_id, [self._notice(item, "unavailable", unavailable)])
            return None
        attachments = self.store.start_turn(item.event_id, self.room_id)
        self.in_flight = item.event_id
        if attachments is None:
            # Delivered by this run of the bot already (this room actor
            # restarted); its answer is coming, unless its connection is gone,
            # which check_in_flight finds out.
            self.in_flight_to = self.ctx.registry.get(("chat", agent.id, binding.chat_id))
            return None
        deliver = Deliver(item.event_id, self.room_id, text, tuple(attachments), self.ctx.address)
        for _ in range(2):
            # A connection that just closed for being idle refuses the
            # message; a fresh one is started the second time round.
            try:
                address = connection_address(self.ctx, agent.id, binding.chat_id, self.bot)
                await address.send(deliver)
            except ActorError:
                continue
            self.in_flight_to = address
            return None
        self.in_flight = None
        await self._finish(item.event_id, [self._notice(item, "undeliverable", _UNDELIVERABLE.format(agent.label))])
        return None

    async def check_in_flight(self) -> None:
        """Fail the turn in flight if its connection is gone for good.

        A connection stopped for good (its agent was parked, say) drops the
        messages it held; its turn would never end, and this room would wait
        for ever. Likewise a turn answered by a connection killed before it
        said so. Checked every ``turn_check_interval`` while a turn is out.
        """
        target = self.in_flight_to
        if self.in_flight is None:
            return
        if self.store.is_handled(self.in_flight):
            # Answered, but the TurnDone never came (its sender was killed).
            self.in_flight = self.in_flight_to = None
            await self.process()
            return
        if target is not None and not target.stopped:
            return
        event_id, self.in_flight, self.in_flight_to = self.in_flight, None, None
        if not self.store.is_handled(event_id):
            self.ctx.log.warning("room.turn_lost_its_connection", event_id=event_id)
            await self._finish(
                event_id,
                [notice(self.room_id, "undeliverable", (event_id,), _UNDELIVERABLE.format("The agent"), source=event_id)],
            )
        await self.process()

    async def _on_file(self, item: InboxEvent, event: ev.FileMessage, binding: RoomBinding) -> None:
        agent = self._agent(binding)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(event.origin_server_ts / 1000))
        try:
            download = await self.bot.client.download(event.url, max_bytes=agent.max_file_bytes)
            relative = await trio.to_thread.run_sync(
                save_incoming, agent.workspace_path, event.filename, download.data, stamp
            )
        except (MatrixError, UnsafeAgentFile, OSError) as exc:
            self.ctx.log.warning("room.file_refused", filename=event.filename, error=str(exc))
            await self._finish(item.event_id, [self._notice(item, "file", f"⚠ I could not take {event.filename!r}: {exc}")])
            return
        self.store.stage(self.room_id, relative, event.filename)
        count = len(self.store.staged(self.room_id))
        body = (
            f"📎 {event.filename} is ready; it goes to the agent with your next message "
            f"({count} file{'s' if count != 1 else ''} waiting; !list, !remove)."
        )
        await self._finish(item.event_id, [self._notice(item, "file", body)])

    # -- confirmations -----------------------------------------------------------

    async def _on_reaction(self, item: InboxEvent, event: ev.Reaction, binding: RoomBinding) -> None:
        approved = True if event.key in APPROVE_KEYS else False if event.key in DENY_KEYS else None
        for pending in self.store.confirmations(self.room_id) if approved is not None else ():
            if self.store.sent_event_id(pending.prompt_txn) == event.target_event_id:
                await self._answer_confirmation(item, pending, approved, binding)
                return
        await self._finish(item.event_id)

    async def _answer_confirmation(self, item: InboxEvent, pending, approved: bool, binding: RoomBinding) -> None:
        if self.store.resolve_confirmation(pending.request_id):
            address = connection_address(self.ctx, binding.agent_id, pending.chat_id, self.bot)
            await address.send(ConfirmAnswer(pending.request_id, approved))
            verdict = "✅ Approved" if approved else "❌ Refused"
            await self._finish(item.event_id, [self._notice(item, "confirm", f"{verdict}: {pending.action}")])
        else:
            await self._finish(item.event_id)

    # -- commands ------------------------------------------------------------------

    async def _on_command(self, item: InboxEvent, command: Any, binding: RoomBinding) -> None:
        reply = await self._run_command(item, command, binding)
        await self._finish(item.event_id, [self._notice(item, "reply", reply)] if reply else [])

    async def _run_command(self, item: InboxEvent, command: Any, binding: RoomBinding) -> str | None:
        store = self.store
        agent = self._agent(binding)
        match command:
            case cmd.Help():
                return cmd.HELP_TEXT
            case cmd.UnknownCommand() | cmd.CommandUsageError():
                return command.reply()
            case cmd.NewChat(name=name):
                space_id = await self._ensure_space(binding.owner)
                room_id = await self._create_chat(binding.owner, agent, space_id, name)
                created = store.binding(room_id)
                return f"Created \"{created.name}\" in your Space; I invited you to it."
            case cmd.ListChats():
                lines = [
                    f"• {b.name or b.room_id}{' (archived)' if b.archived else ''}{' ← here' if b.room_id == self.room_id else ''}"
                    for b in store.user_rooms(binding.owner)
                ]
                return "Your chats:\n" + "\n".join(lines)
            case cmd.RenameChat(name=name):
                await self.bot.client.put_state(self.room_id, "m.room.name", {"name": name})
                await self._bind(replace(binding, name=name))
                return f"Renamed this chat to \"{name}\"."
            case cmd.ArchiveChat():
                await self._bind(replace(binding, archived=True))
                return "This chat is archived; messages here no longer go to the agent. Use !new for a new chat."
            case cmd.ClearContext():
                chat_id = store.new_chat_id(self.room_id)
                await self._bind(replace(binding, chat_id=chat_id))
                return f"Started over: {agent.label} now sees a fresh conversation here (chat {chat_id})."
            case cmd.Yes() | cmd.No():
                pending = store.confirmations(self.room_id)
                if not pending:
                    return "Nothing is waiting for your answer."
                await self._answer_confirmation(item, pending[0], isinstance(command, cmd.Yes), binding)
                return None
            case cmd.ListStaged():
                staged = store.staged(self.room_id)
                if not staged:
                    return "No files are waiting."
                return "Files waiting for your next message:\n" + "\n".join(
                    f"{n}. {f.filename}" for n, f in enumerate(staged, 1)
                )
            case cmd.RemoveStaged(index=index):
                staged = store.staged(self.room_id)
                if index is None:
                    store.unstage(self.room_id)
                    return f"Removed {len(staged)} waiting file{'s' if len(staged) != 1 else ''}."
                if not 1 <= index <= len(staged):
                    return f"There is no file {index}; !list shows {len(staged)}."
                store.unstage(self.room_id, [staged[index - 1].seq])
                return f"Removed {staged[index - 1].filename}."
            case cmd.ShowContext():
                staged = store.staged(self.room_id)
                pending = store.confirmations(self.room_id)
                state = self._agent_unavailable(agent) or "available"
                return "\n".join(
                    [
                        f"Agent: {agent.label} ({agent.id}) — {state}",
                        f"Chat id: {binding.chat_id}",
                        f"Waiting files: {', '.join(f.filename for f in staged) or 'none'}",
                        f"Waiting for your answer: {pending[0].action if pending else 'nothing'}",
                    ]
                )
        return cmd.UnknownCommand(type(command).__name__).reply()


def _is_group(invite: ev.Invite) -> bool:
    return bool(invite.member_count and invite.member_count > 2) or not invite.is_direct


def _body(event: Any) -> str:
    return event.body if isinstance(event.body, str) else ""


def _space_name(owner: str) -> str:
    localpart = owner[1:].split(":", 1)[0]
    return f"Lambda — {localpart}"


async def _ignore_matrix_error(awaitable) -> None:
    try:
        await awaitable
    except MatrixError:
        pass


_ENCRYPTED = (
    "⚠ This room is end-to-end encrypted, and I cannot read encrypted messages. "
    "Please talk to me in an unencrypted room: use !new in an unencrypted chat, or invite me to one."
)
_UNDELIVERABLE = "⚠ {} became unavailable before answering this. Please send your message again."
_ARCHIVED = "This chat is archived, so I did not send that to the agent. Use !new to start a new chat."
