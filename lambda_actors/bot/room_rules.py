"""The room's rules as a pure machine: an event and what is known in, actions out.

The room actor (``bot/actors/room.py``) reads an unhandled event from the
inbox, gathers the :class:`RoomFacts` the rules need (from the store, the
configuration and the supervision tree), asks :meth:`RoomRules.handle` what
to do, and executes the actions in order. The rules do no I/O and read no
clock (the wall-clock ``now`` is passed in), so every rule below is a unit
test without a homeserver; the actor only executes.

The rules, in the order they are applied to one event:

1. **Poison.** An event whose handling crashed the room :data:`POISON_LIMIT`
   times is set aside (marked handled, a dead-letter record, a notice to its
   sender) instead of being handled again: a deterministic bug costs one
   message, never the room.
2. **Our own events** and events the parser could not use are marked handled.
3. **Invitations.** From a configured user: join, give them a Space and a
   first chat unless they have one, bind a direct chat, and welcome them (an
   encrypted room gets a notice naming the rooms to talk in instead). From
   anyone else: refuse politely and leave; a group room is left silently.
4. **Adoption.** A message in a room with no binding, from a configured user
   alone with the bot, binds that room as a fresh direct chat (the database
   was lost and the room could not hold its binding). The rules ask for the
   room's members first (:class:`NeedMembers`). A room marked as the node's
   own (a DAG status or heartbeat room, ``org.lambda.service``) is never
   adopted.
5. **Not the owner.** Anything else in an unbound room, or from someone who
   is not the room's owner, is marked handled: nothing goes to an agent;
   except an approval's answer (a reaction, ``!yes`` / ``!no``) from the
   approver of a request waiting in that room, which is taken as in a chat
   (a blocked DAG task asks its run's owner in the status room).
6. **Encryption.** The room becoming encrypted gets a notice.
7. **Configuration drift.** A room bound to an agent no longer configured
   tells its owner: when the owner now maps to another agent, the room is
   rebound to it in a fresh context (saying so) and the event goes on;
   otherwise the agent is gone, and the event is answered so. One warning in
   the log per room, not one per event.
8. **Approvals.** ✅/❌ on a prompt, or ``!yes``/``!no`` in reply to it,
   answers that prompt; a bare ``!yes``/``!no`` answers what is waiting for
   its sender here. Every one goes to the node's approvals actor, one gate
   for the API's requests and the agents' confirmations alike (they are the
   same records): it decides (only the approver counts, answers sent before
   the deadline count) or, with several waiting, asks which and decides
   nothing. With nothing waiting the rules say so themselves.
9. **Files** are staged for the next message, within the room's byte budget
   (``limits.staged_bytes_per_room``) and the agent's file size.
10. **Commands** (``bot/commands.py``) are answered without the agent;
    ``!new`` within ``limits.rooms_per_user_per_hour``; ``!remove`` deletes
    the file.
11. **One turn at a time.** A text goes to the agent only when no turn is in
    flight; otherwise it waits (:class:`Wait`, it stays unhandled). Events
    before it are handled at once; past a waiting message only confirmation
    answers are taken (:func:`admit`), since the turn in flight may be
    waiting for them. An archived room, or a parked agent, answers at once.
12. **A lost turn.** When an incarnation of the connection holding the turn
    in flight ends (a ``Down``): a turn it answered is over (its
    ``TurnDone`` may never come); one it did not waits for the next
    incarnation, which takes the connection's mailbox; if the connection is
    stopped for good, the turn ends with an error notice.
13. **The homeserver refuses** (a room cannot be created or renamed): the
    user is told, with the homeserver's error code; the event is not retried.

Every notice reporting an error carries its kind (``org.lambda.error``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from . import commands as cmd
from .agents_directory import AgentDirectory
from .config import AgentConfig, AgentsConfig
from .store import RoomBinding, StagedFile
from .actors.services import (
    ERROR_AGENT_REMOVED,
    ERROR_AGENT_UNAVAILABLE,
    ERROR_ARCHIVED,
    ERROR_ENCRYPTED,
    ERROR_FILE,
    ERROR_HOMESERVER,
    ERROR_LIMIT,
    ERROR_SET_ASIDE,
    ERROR_UNDELIVERABLE,
    FAULT_POISON,
    POISON_MARK,
    txn_id,
)
from ..approvals.gate import Answer
from ..approvals.record import Via
from ..matrix import events as ev

__all__ = [
    "APPROVE_KEYS",
    "DENY_KEYS",
    "POISON_LIMIT",
    "Again",
    "ApprovalPrompt",
    "AskApprovals",
    "Bind",
    "CreateChat",
    "Deliver",
    "Download",
    "Finish",
    "InjectedFault",
    "Join",
    "KeepWatching",
    "Leave",
    "Log",
    "NeedMembers",
    "Onboard",
    "Post",
    "RenameRoom",
    "RoomFacts",
    "RoomRules",
    "Say",
    "SayNow",
    "SetAside",
    "Unstage",
    "Wait",
    "admit",
    "creation_marker",
    "drifted_bindings",
    "file_refused",
    "file_staged",
    "facts_needed",
    "find_marked",
    "homeserver_refused",
    "is_confirmation_answer",
    "space_name",
    "unknown_rooms",
    "welcome",
]

#: Crashes of the room while handling one event before it is set aside.
POISON_LIMIT = 3
#: The window of ``limits.rooms_per_user_per_hour``, in seconds.
ROOM_WINDOW = 3600.0

APPROVE_KEYS = frozenset({"✅", "✔️", "👍"})
DENY_KEYS = frozenset({"❌", "✖️", "👎"})

#: State event put in every room the bot creates, naming what caused it, so
#: a creation replayed after a crash finds the room instead of making another.
CREATED_STATE = "org.lambda.created"


class InjectedFault(Exception):
    """The ``poison`` fault of a chaos run: a stand-in for a deterministic bug."""


# -- what the rules are told ------------------------------------------------------


@dataclass(frozen=True)
class RoomFacts:
    """What the executor read for one event, just before asking the rules.

    The first five are always read; the others only when :func:`facts_needed`
    names them for the event (a plain text, the common case, needs none).

    ``parked`` maps a parked agent's id to the wall-clock time of its next
    try. ``room_slot_free_at`` is when the sender may have a room created
    again (set only when they are at their hourly limit). ``members`` is
    None until the rules ask for them (:class:`NeedMembers`).
    """

    room_id: str
    bot_user_id: str
    binding: RoomBinding | None = None
    failures: int = 0
    owner_rooms: tuple[RoomBinding, ...] = ()
    staged: tuple[StagedFile, ...] = ()
    staged_bytes: int = 0
    #: The node's approval records waiting in this room for the event's
    #: sender: the API's requests and the agents' confirmations.
    approvals: tuple[ApprovalPrompt, ...] = ()
    parked: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    rooms_created_last_hour: int = 0
    room_slot_free_at: float | None = None
    members: frozenset[str] | None = None
    #: The room carries the node's service marker (a DAG status or heartbeat
    #: room); read with the members.
    service_room: bool = False


@dataclass(frozen=True)
class ApprovalPrompt:
    """A pending approval record (SPEC 7.1; an API request or an agent's confirmation), as the room sees it."""

    approval_id: str
    action: str
    #: The event id of its prompt, once posted (reactions and replies point at it).
    prompt_event: str | None


# -- what the rules ask for -------------------------------------------------------


@dataclass(frozen=True)
class Say:
    """A notice about the event being handled (its txn id comes from the event and ``kind``).

    ``done=False`` for a notice that does not end the message's answer.
    """

    kind: str
    body: str
    error: str | None = None
    done: bool = True


@dataclass(frozen=True)
class Finish:
    """Mark the event handled and queue these notices, in one transaction."""

    says: tuple[Say, ...] = ()


@dataclass(frozen=True)
class Post:
    """Queue a notice now, without finishing the event (more is coming)."""

    say: Say


@dataclass(frozen=True)
class SetAside:
    """The event is poison: mark it handled with a dead-letter record and this notice."""

    say: Say


@dataclass(frozen=True)
class Wait:
    """A user message that waits for the turn in flight; it stays unhandled."""


@dataclass(frozen=True)
class NeedMembers:
    """Read the room's joined members into ``RoomFacts.members``, and whether
    it is one of the node's own rooms into ``RoomFacts.service_room``, and ask again."""


@dataclass(frozen=True)
class Again:
    """Execute the actions before this one, read the facts again and ask again
    (the room's binding just changed)."""


@dataclass(frozen=True)
class KeepWatching:
    """Watch the connection's next incarnation: the turn may still be in its mailbox."""


@dataclass(frozen=True)
class Log:
    level: str
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Join:
    """Join the room; if that fails the invitation is over (finish, nothing else)."""


@dataclass(frozen=True)
class Leave:
    """Leave the room (a failure changes nothing)."""


@dataclass(frozen=True)
class SayNow:
    """Send this notice directly, not through the outbox: it must arrive before a :class:`Leave`."""

    say: Say


@dataclass(frozen=True)
class Onboard:
    """Welcome a configured user who invited the bot.

    Make sure they have a Space; create a first chat when
    ``create_first_chat``; bind this room as a direct chat when
    ``bind_here``; then finish with :func:`welcome`'s text.
    """

    owner: str
    agent_id: str
    create_first_chat: bool
    bind_here: bool
    room_name: str
    encrypted: bool


@dataclass(frozen=True)
class CreateChat:
    """``!new``: a chat room in the owner's Space; ``marker`` finds it again after a crash."""

    owner: str
    agent_id: str
    name: str | None
    marker: str


@dataclass(frozen=True)
class Bind:
    """Record (and mirror in room state) this binding; ``fresh_context`` gives it a new chat id."""

    binding: RoomBinding
    fresh_context: bool = False


@dataclass(frozen=True)
class RenameRoom:
    name: str


@dataclass(frozen=True)
class Unstage:
    """Drop staged files (all when ``seqs`` is None) and delete them from the workspace."""

    seqs: tuple[int, ...] | None


@dataclass(frozen=True)
class Download:
    """Fetch a file the owner sent (at most ``max_bytes``) and stage it.

    The result is a notice from :func:`file_staged` or :func:`file_refused`.
    """

    url: str
    filename: str
    agent_id: str
    max_bytes: int
    origin_server_ts: int


@dataclass(frozen=True)
class AskApprovals:
    """Hand an answer to the node's approvals actor, the one owner of those
    decisions; it edits the prompt, or asks "which one?" itself."""

    answer: Answer


@dataclass(frozen=True)
class Deliver:
    """Hand the text to the agent as a turn; ``undeliverable`` ends it if that fails."""

    text: str
    agent_id: str
    chat_id: int
    undeliverable: Say


Action = (
    Say
    | Finish
    | Post
    | SetAside
    | Wait
    | NeedMembers
    | Again
    | Log
    | Join
    | Leave
    | SayNow
    | Onboard
    | CreateChat
    | Bind
    | RenameRoom
    | Unstage
    | Download
    | AskApprovals
    | Deliver
)


# -- the machine ------------------------------------------------------------------


class RoomRules:
    """The rules of one room. Its state is the turn in flight and what it has warned about."""

    def __init__(self, agents: AgentsConfig | AgentDirectory, *, faults: frozenset[str] = frozenset()) -> None:
        self.agents = AgentDirectory.of(agents)
        self.faults = faults
        self.limits = agents.limits
        #: The user message whose turn is with the agent now, if any.
        self.in_flight: str | None = None
        self._drift_warned = False

    # -- the turn in flight ---------------------------------------------------------

    def turn_started(self, event_id: str) -> None:
        self.in_flight = event_id

    def turn_done(self, event_id: str) -> bool:
        """The connection ended the turn; True if it was the one in flight."""
        if self.in_flight == event_id:
            self.in_flight = None
            return True
        return False

    def turn_lost(self, handled: bool, gone_for_good: bool = True) -> tuple[str, Say] | KeepWatching | None:
        """An incarnation of the connection holding the turn in flight ended (a ``Down``).

        A turn it answered already just ends (None: its ``TurnDone`` may
        never come). One it did not answer waits on while the connection
        lives on (:class:`KeepWatching`): the message may still be in its
        mailbox, which outlives a restart, and a connection ending an
        answer early says so itself. A connection stopped for good has
        dropped it: the turn ends with an error notice, ``(event_id, notice)``.
        """
        event_id = self.in_flight
        if event_id is None:
            return None
        if not handled and not gone_for_good:
            return KeepWatching()
        self.in_flight = None
        if handled:
            return None
        return event_id, Say("undeliverable", _UNDELIVERABLE.format("The agent"), error=ERROR_UNDELIVERABLE)

    # -- one event ------------------------------------------------------------------

    def handle(self, event: Any, facts: RoomFacts, now: float) -> list[Action]:
        """The actions for one unhandled event, in order (``now``: wall-clock seconds)."""
        if facts.failures >= POISON_LIMIT:
            return [SetAside(Say("set_aside", _SET_ASIDE, error=ERROR_SET_ASIDE))]
        if event is None or getattr(event, "sender", None) == facts.bot_user_id:
            return [Finish()]
        if (
            FAULT_POISON in self.faults
            and isinstance(event, ev.TextMessage)
            and POISON_MARK in event.body
        ):
            raise InjectedFault(f"injected poison fault: event {event.event_id} contains {POISON_MARK}")
        if isinstance(event, ev.Invite):
            return self._invite(event, facts)
        binding = facts.binding
        if binding is None and facts.approvals:
            # An approval asked in a room that is no chat (a DAG run's
            # status room): its approver answers it there like anywhere.
            if isinstance(event, ev.Reaction):
                return self._reaction(event, facts)
            if isinstance(event, ev.TextMessage) and isinstance(command := cmd.parse_command(event.body), (cmd.Yes, cmd.No)):
                return self._yes_no(event, isinstance(command, cmd.Yes), facts)
        if binding is None and isinstance(event, (ev.TextMessage, ev.FileMessage)):
            if self.agents.user_agents.get(event.sender, self.agents.default_agent) is not None:
                if facts.members is None:
                    return [NeedMembers()]
                if facts.members == {event.sender, facts.bot_user_id} and not facts.service_room:
                    agent = self.agents.agent_for(event.sender)
                    assert agent is not None
                    adopted = RoomBinding(facts.room_id, event.sender, agent.id, 0, "Direct chat")
                    return [
                        Bind(adopted, fresh_context=True),
                        Log("info", "room.direct_chat_adopted", {"room_id": facts.room_id, "owner": event.sender}),
                        Again(),
                    ]
            # A room we are in but that is no chat (a Space, or a room we
            # were refused from): say nothing, the owner's rooms are elsewhere.
            return [Log("info", "room.message_in_unbound_room", {"sender": event.sender}), Finish()]
        if binding is None or event.sender != binding.owner:
            return [Finish()]
        if isinstance(event, ev.OtherEvent) and event.event_type == "m.room.encryption":
            return [Finish((Say("encrypted", encrypted_notice(binding.owner, facts.owner_rooms), error=ERROR_ENCRYPTED),))]
        agent = self._agent(binding.agent_id)
        if agent is None:
            return self._drift(binding, facts)
        if isinstance(event, ev.Reaction):
            return self._reaction(event, facts)
        if isinstance(event, ev.FileMessage):
            return self._file(event, facts, agent)
        if isinstance(event, ev.TextMessage):
            command = cmd.parse_command(event.body)
            if command is not None:
                return self._command(event, command, facts, binding, agent, now)
            return self._text(event, facts, binding, agent, now)
        return [Finish()]

    def _agent(self, agent_id: str) -> AgentConfig | None:
        try:
            return self.agents.agent(agent_id)
        except KeyError:
            return None

    # -- invitations ------------------------------------------------------------------

    def _invite(self, invite: ev.Invite, facts: RoomFacts) -> list[Action]:
        agent = self.agents.agent_for(invite.sender)
        group = _is_group(invite)
        if agent is None and group:
            return [
                Log("info", "room.invite_declined", {"inviter": invite.sender, "reason": "group room, unknown user"}),
                Leave(),
                Finish(),
            ]
        if agent is None:
            return [
                Join(),
                SayNow(Say("refusal", _REFUSAL)),
                Leave(),
                Finish(),
                Log("info", "room.invite_refused", {"inviter": invite.sender}),
            ]
        return [
            Join(),
            Onboard(
                owner=invite.sender,
                agent_id=agent.id,
                create_first_chat=not any(b.space_id for b in facts.owner_rooms),
                bind_here=not invite.encrypted and facts.binding is None,
                room_name=invite.room_name or "Direct chat",
                encrypted=invite.encrypted,
            ),
        ]

    # -- configuration drift ---------------------------------------------------------

    def _drift(self, binding: RoomBinding, facts: RoomFacts) -> list[Action]:
        """The room's agent is gone from agents.yaml: answer so, or rebind the
        room to the owner's agent now (a fresh context) and handle the event again."""
        actions: list[Action] = []
        # A deregistered agent's room is not moved to another agent: its owner
        # chose to withdraw that agent, not to talk to a different one here.
        successor = None if self.agents.is_deregistered(binding.agent_id) else self.agents.agent_for(binding.owner)
        if not self._drift_warned:
            # Once per room: every later event of the room would say the same.
            self._drift_warned = True
            actions.append(
                Log(
                    "warning",
                    "room.agent_removed",
                    {
                        "room_id": facts.room_id,
                        "agent": binding.agent_id,
                        "owner": binding.owner,
                        "now_with": successor.id if successor else None,
                    },
                )
            )
        if successor is None:
            text = _AGENT_DEREGISTERED if self.agents.is_deregistered(binding.agent_id) else _AGENT_GONE
            gone = Say("agent_removed", text.format(binding.agent_id), error=ERROR_AGENT_REMOVED)
            return [*actions, Finish((gone,))]
        new = replace(binding, agent_id=successor.id)
        told = Say(
            "agent_replaced",
            _AGENT_REPLACED.format(old=binding.agent_id, new=successor.label),
            error=ERROR_AGENT_REMOVED,
            done=False,
        )
        return [*actions, Bind(new, fresh_context=True), Post(told), Again()]

    # -- approvals -----------------------------------------------------------------------

    def _reaction(self, event: ev.Reaction, facts: RoomFacts) -> list[Action]:
        approved = True if event.key in APPROVE_KEYS else False if event.key in DENY_KEYS else None
        if approved is not None:
            for prompt in facts.approvals:
                if prompt.prompt_event is not None and prompt.prompt_event == event.target_event_id:
                    return [AskApprovals(Answer(event.sender, approved, Via.REACTION, _seconds(event), prompt.approval_id))]
        return [Finish()]

    def _yes_no(self, event: ev.TextMessage, approved: bool, facts: RoomFacts) -> list[Action]:
        """``!yes`` / ``!no``: a reply answers the prompt it replies to; a bare
        one goes to the gate, which decides the one thing waiting or, with
        several, asks which (it never guesses)."""
        if event.reply_to is not None:
            for prompt in facts.approvals:
                if prompt.prompt_event == event.reply_to:
                    return [AskApprovals(Answer(event.sender, approved, Via.COMMAND, _seconds(event), prompt.approval_id))]
        if not facts.approvals:
            return [Finish((Say("reply", "Nothing is waiting for your answer."),))]
        return [AskApprovals(Answer(event.sender, approved, Via.COMMAND, _seconds(event)))]

    # -- files ----------------------------------------------------------------------------

    def _file(self, event: ev.FileMessage, facts: RoomFacts, agent: AgentConfig) -> list[Action]:
        room_left = self.limits.staged_bytes_per_room - facts.staged_bytes
        if room_left <= 0 or (event.size is not None and event.size > room_left):
            return [
                Finish(
                    (
                        Say(
                            "file",
                            f"⚠ I could not take {event.filename!r}: the files waiting in this room would exceed "
                            f"{size_text(self.limits.staged_bytes_per_room)}. Send your message (the waiting files go "
                            "with it) or drop some with !remove, then send the file again.",
                            error=ERROR_LIMIT,
                        ),
                    )
                )
            ]
        return [Download(event.url, event.filename, agent.id, min(agent.max_file_bytes, room_left), event.origin_server_ts)]

    # -- text ----------------------------------------------------------------------------

    def _text(self, event: ev.TextMessage, facts: RoomFacts, binding: RoomBinding, agent: AgentConfig, now: float) -> list[Action]:
        if self.in_flight is not None:
            return [Wait()]
        if binding.archived:
            return [Finish((Say("archived", _ARCHIVED, error=ERROR_ARCHIVED),))]
        unavailable = self._unavailable(agent, facts)
        if unavailable is not None:
            return [Finish((Say("unavailable", unavailable, error=ERROR_AGENT_UNAVAILABLE),))]
        return [
            Deliver(
                event.body,
                agent.id,
                binding.chat_id,
                Say("undeliverable", _UNDELIVERABLE.format(agent.label), error=ERROR_UNDELIVERABLE),
            )
        ]

    def _unavailable(self, agent: AgentConfig, facts: RoomFacts) -> str | None:
        retry_at = facts.parked.get(agent.id)
        if retry_at is None:
            return None
        return (
            f"⚠ {agent.label} is unavailable right now (it failed repeatedly); "
            f"next try at {_clock(retry_at)}. Please send your message again after that."
        )

    # -- commands --------------------------------------------------------------------------

    def _command(
        self, event: ev.TextMessage, command: Any, facts: RoomFacts, binding: RoomBinding, agent: AgentConfig, now: float
    ) -> list[Action]:
        def reply(body: str, error: str | None = None) -> list[Action]:
            return [Finish((Say("reply", body, error=error),))]

        match command:
            case cmd.Help():
                return reply(cmd.HELP_TEXT)
            case cmd.UnknownCommand() | cmd.CommandUsageError():
                return reply(command.reply())
            case cmd.NewChat(name=name):
                if facts.rooms_created_last_hour >= self.limits.rooms_per_user_per_hour:
                    free_at = facts.room_slot_free_at if facts.room_slot_free_at is not None else now + ROOM_WINDOW
                    return reply(
                        f"⚠ You have had {facts.rooms_created_last_hour} chats created in the last hour, the most "
                        f"allowed ({self.limits.rooms_per_user_per_hour} an hour). You can create the next one "
                        f"at {_clock(free_at)}; until then, !clear starts over in this chat.",
                        ERROR_LIMIT,
                    )
                return [CreateChat(binding.owner, agent.id, name, creation_marker("chat", event.event_id))]
            case cmd.ListChats():
                lines = [
                    f"• {b.name or b.room_id}{' (archived)' if b.archived else ''}{' ← here' if b.room_id == facts.room_id else ''}"
                    for b in facts.owner_rooms
                ]
                return reply("Your chats:\n" + "\n".join(lines))
            case cmd.RenameChat(name=name):
                return [
                    RenameRoom(name),
                    Bind(replace(binding, name=name)),
                    Finish((Say("reply", f"Renamed this chat to \"{name}\"."),)),
                ]
            case cmd.ArchiveChat():
                return [
                    Bind(replace(binding, archived=True)),
                    Finish((Say("reply", "This chat is archived; messages here no longer go to the agent. Use !new for a new chat."),)),
                ]
            case cmd.ClearContext():
                return [
                    Bind(binding, fresh_context=True),
                    Finish((Say("reply", f"Started over: {agent.label} now sees a fresh conversation here."),)),
                ]
            case cmd.Yes() | cmd.No():
                return self._yes_no(event, isinstance(command, cmd.Yes), facts)
            case cmd.ListStaged():
                if not facts.staged:
                    return reply("No files are waiting.")
                return reply(
                    "Files waiting for your next message:\n"
                    + "\n".join(f"{n}. {f.filename}" for n, f in enumerate(facts.staged, 1))
                )
            case cmd.RemoveStaged(index=None):
                count = len(facts.staged)
                return [Unstage(None), Finish((Say("reply", f"Removed {count} waiting file{'s' if count != 1 else ''}."),))]
            case cmd.RemoveStaged(index=int(index)):
                if not 1 <= index <= len(facts.staged):
                    return reply(f"There is no file {index}; !list shows {len(facts.staged)}.")
                chosen = facts.staged[index - 1]
                return [Unstage((chosen.seq,)), Finish((Say("reply", f"Removed {chosen.filename}."),))]
            case cmd.ShowContext():
                state = self._unavailable(agent, facts) or "available"
                pending = [a.action for a in facts.approvals]
                return reply(
                    "\n".join(
                        [
                            f"Agent: {agent.label} ({agent.id}) — {state}",
                            f"Chat id: {binding.chat_id}",
                            f"Waiting files: {', '.join(f.filename for f in facts.staged) or 'none'}",
                            f"Waiting for your answer: {'; '.join(pending) if pending else 'nothing'}",
                        ]
                    )
                )
        return reply(cmd.UnknownCommand(type(command).__name__).reply())


#: Names of the optional facts (groups of :class:`RoomFacts` fields).
OWNER_ROOMS, STAGED, ROOMS_CREATED, APPROVALS = "owner_rooms", "staged", "rooms_created", "approvals"


def facts_needed(event: Any) -> frozenset[str]:
    """Which optional facts the rules read for this event: the executor reads
    only those (each is a query; a plain text needs none)."""
    if isinstance(event, (ev.Invite, ev.OtherEvent)):
        return frozenset({OWNER_ROOMS})
    if isinstance(event, ev.Reaction):
        return frozenset({APPROVALS})
    if isinstance(event, ev.FileMessage):
        return frozenset({STAGED})
    if isinstance(event, ev.TextMessage):
        match cmd.parse_command(event.body):
            case cmd.NewChat():
                return frozenset({ROOMS_CREATED})
            case cmd.ListChats():
                return frozenset({OWNER_ROOMS})
            case cmd.Yes() | cmd.No():
                return frozenset({APPROVALS})
            case cmd.ListStaged() | cmd.RemoveStaged():
                return frozenset({STAGED})
            case cmd.ShowContext():
                return frozenset({STAGED, APPROVALS})
    return frozenset()


# -- the order of events ---------------------------------------------------------------


def is_confirmation_answer(event: Any) -> bool:
    """✅/❌ reactions and ``!yes``/``!no``: what a turn in flight may be waiting for."""
    if isinstance(event, ev.Reaction):
        return True
    if isinstance(event, ev.TextMessage):
        return isinstance(cmd.parse_command(event.body), (cmd.Yes, cmd.No))
    return False


def admit(event_id: str, event: Any, in_flight: str | None, waiting: bool) -> bool:
    """Whether to handle this unhandled event now.

    The turn in flight is not handled again; past a message that waits for
    it (``waiting``) only confirmation answers are taken.
    """
    if event_id == in_flight:
        return False
    return not waiting or is_confirmation_answer(event)


def drifted_bindings(
    bindings: list[RoomBinding] | tuple[RoomBinding, ...], agents: AgentsConfig | AgentDirectory
) -> list[RoomBinding]:
    """Stored bindings whose agent is no longer in agents.yaml (checked at
    start, for one summary line; each room tells its owner on their next message)."""
    configured = {agent.id for agent in agents.agents}
    return [b for b in bindings if b.agent_id not in configured and not b.archived]


# -- replay-safe creation ----------------------------------------------------------------


def creation_marker(what: str, *cause: str) -> str:
    """The marker put in a room the bot creates: derived from what caused it, so
    the same cause replayed after a crash looks for the same marker."""
    return txn_id(f"created.{what}", *cause)


def creation_state(marker: str) -> dict[str, Any]:
    """The ``initial_state`` entry carrying ``marker``."""
    return {"type": CREATED_STATE, "state_key": "", "content": {"marker": marker}}


def unknown_rooms(joined: tuple[str, ...] | list[str], known: set[str]) -> list[str]:
    """Joined rooms the store has no record of: where a room created just
    before a crash can be (every other room is recorded)."""
    return [room for room in joined if room not in known]


def find_marked(markers: Mapping[str, Any], marker: str) -> str | None:
    """The room whose creation marker is ``marker``, from ``room id -> content
    of its org.lambda.created state`` (None where the room has none)."""
    for room_id, content in markers.items():
        if isinstance(content, Mapping) and content.get("marker") == marker:
            return room_id
    return None


# -- texts --------------------------------------------------------------------------------


def space_name(owner: str) -> str:
    localpart = owner[1:].split(":", 1)[0]
    return f"Lambda — {localpart}"


def encrypted_notice(owner: str, rooms: tuple[RoomBinding, ...] | list[RoomBinding]) -> str:
    """The notice for an encrypted room, naming where to talk instead."""
    chats = [b.name or b.room_id for b in rooms if b.space_id and not b.archived]
    if chats:
        where = ", ".join(f"“{name}”" for name in chats[:3])
        instead = f"Please talk to me in {where} in your Space “{space_name(owner)}”, or use !new there for another chat."
    else:
        instead = "Please talk to me in an unencrypted room: invite me to one, or use !new in an unencrypted chat."
    return f"⚠ This room is end-to-end encrypted, and I cannot read encrypted messages. {instead}"


def welcome(agent_label: str, owner: str, created: str | None, rooms: list[RoomBinding], encrypted: bool) -> Say:
    """The welcome after an invitation (``created``: the name of the chat just made)."""
    if encrypted:
        return Say("welcome", encrypted_notice(owner, rooms), error=ERROR_ENCRYPTED)
    where = f" I made a first chat for you, “{created}”, in your Space “{space_name(owner)}”." if created else ""
    return Say(
        "welcome",
        f"Hello! I connect you to {agent_label}.{where} Every chat room is its own conversation "
        f"with the agent. You can also talk to it right here.\n\n{cmd.HELP_TEXT}",
    )


def chat_welcome(name: str, agent_label: str) -> str:
    return f"This is \"{name}\", a new conversation with {agent_label}. Write here to talk to it.\n\n{cmd.HELP_TEXT}"


def chat_created(name: str) -> Say:
    return Say("reply", f"Created \"{name}\" in your Space; I invited you to it.")


def homeserver_refused(what: str, errcode: str) -> Say:
    """The homeserver said no to something a command needed (retrying would not help)."""
    return Say("refused", f"⚠ I could not {what}: the homeserver refused ({errcode}).", error=ERROR_HOMESERVER)


def file_staged(filename: str, count: int) -> Say:
    return Say(
        "file",
        f"📎 {filename} is ready; it goes to the agent with your next message "
        f"({count} file{'s' if count != 1 else ''} waiting; !list, !remove).",
    )


def file_refused(filename: str, reason: str) -> Say:
    """A file that could not be taken: malformed or unfetchable media, unsafe, too big."""
    return Say("file", f"⚠ I could not take {filename!r}: {reason}. Please check the file and send it again.", error=ERROR_FILE)


def _seconds(event: ev.RoomEvent) -> float:
    """When the event was sent (its ``origin_server_ts``), in seconds: an
    answer counts if it was sent before the deadline (SPEC 7.1)."""
    return event.origin_server_ts / 1000


def _is_group(invite: ev.Invite) -> bool:
    return bool(invite.member_count and invite.member_count > 2) or not invite.is_direct


def _clock(at: float) -> str:
    return f"{datetime.fromtimestamp(at):%H:%M:%S}"


def size_text(n: int) -> str:
    """A byte count for people: ``512 bytes``, ``3 KB``, ``200 MB``."""
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}"


_SET_ASIDE = "⚠ This message could not be handled and was set aside; the operator has the details."
_REFUSAL = (
    "Sorry, I only work for the people my operator has configured, and you are not one of them. "
    "Ask the operator to add your Matrix id if you think you should be."
)
_UNDELIVERABLE = "⚠ {} became unavailable before answering this. Please send your message again."
_ARCHIVED = "This chat is archived, so I did not send that to the agent. Use !new to start a new chat."
_AGENT_GONE = (
    "⚠ The agent this chat was with ({}) is no longer configured, and no other agent is set up for you. "
    "Ask the operator to add one; your messages here will go to it then."
)
_AGENT_DEREGISTERED = (
    "⚠ The agent this chat was with ({}) was deregistered: messages here no longer go to any agent. "
    "Archive this chat with !archive, or use a chat with another agent."
)
_AGENT_REPLACED = (
    "ℹ The agent this chat was with ({old}) is no longer configured. I continue this chat with {new}, "
    "in a fresh conversation: it does not know what was said here before."
)
