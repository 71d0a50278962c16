"""``node/registry``: agents registered through the API, and the rooms the node makes.

SPEC 7.2. A registration is asked as an approval record (source
``registration``) in the owner's room: the approvals gate shows it, takes
the owner's answer and expires it at the deadline; this actor does the rest
when the record is final (the gate pokes it with :class:`Settle`):

- approved: a DID ``did:lambda:agent:<uuid>`` (kept before anything else,
  so a crash mid-way reuses it), the agent in the agents directory and
  started as ``node/agents/<did>`` (``start_child``: no restart), a room named
  by its label in the owner's Space, the owner invited and the room bound to
  the DID; then the registration is ``approved`` and its callback is due;
- denied, expired, cancelled: the registration says so; its callback is due.

Every pending registration is looked at again after each message and at
start, so a poke lost while this actor restarted, or a set-up cut short by a
crash, completes later. Room creation is replay-safe (creation markers), so
doing it again never makes two rooms. A homeserver that does not answer
leaves the registration pending and is tried again after :data:`RETRY_S`.

It also makes a room for an approver who has none (SPEC 7.1, :class:`MakeRoom`)
and deregisters (``DELETE``: connections closed, rooms told, record kept).

Calls: this actor calls the approvals actor (``Ask``); the approvals actor
only ``send_nowait``s to it, so no call cycle can form. Matrix calls wait
here, in this actor alone: the gate and the rooms never wait for them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio

from ..bot import room_rules as rules
from ..bot.actors.creation import create_chat, ensure_space
from ..bot.actors.outbox import tell_outbox
from ..bot.actors.services import AGENTS_PATH, APPROVALS_PATH, ERROR_AGENT_REMOVED, BotServices, notice
from ..bot.agents_directory import RegisteredAgent
from ..matrix.errors import InvalidToken, MatrixError, MatrixFailure, RateLimited
from ..runtime.context import ActorContext
from ..runtime.errors import ActorError, CallError
from ..runtime.request import Request
from ..runtime.spec import SupervisorSpec
from ..runtime.state import Status
from .messages import Ask, Conflict, NotFound, Unservable
from .record import Approval, Source
from .registration import (
    RegStatus,
    Registration,
    move,
    new_did,
    new_registration_id,
    outcome,
    registration_action,
)
from .registration_store import RegistrationStore
from .registry_messages import Deregister, MakeRoom, Register, Settle, Unavailable
from .store import ApprovalStore, new_approval_id

__all__ = ["RETRY_S", "registry_actor"]

#: How soon a registration left pending by a homeserver that did not answer is tried again.
RETRY_S = 5.0


async def registry_actor(
    ctx: ActorContext, bot: BotServices, registrations: RegistrationStore, approvals: ApprovalStore,
    poke_callbacks: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
) -> None:
    registry = _Registry(ctx, bot, registrations, approvals, poke_callbacks, clock)
    await registry.settle_all()
    while True:
        msg = None
        with trio.move_on_after(registry.retry_in()):
            try:
                msg = await ctx.mailbox.receive()
            except trio.EndOfChannel:
                return
        if isinstance(msg, Request):
            await registry.handle(msg)
        await registry.settle_all()


class _Registry:
    def __init__(
        self, ctx: ActorContext, bot: BotServices, registrations: RegistrationStore, approvals: ApprovalStore,
        poke_callbacks: Callable[[], None], clock: Callable[[], float],
    ) -> None:
        self.ctx = ctx
        self.bot = bot
        self.registrations = registrations
        self.approvals = approvals
        self.poke_callbacks = poke_callbacks
        self.clock = clock
        #: Whether some registration waits for the homeserver (tried again after RETRY_S).
        self.stalled = False

    def retry_in(self) -> float:
        return RETRY_S if self.stalled else math.inf

    async def handle(self, msg: Request[object]) -> None:
        try:
            match msg.msg:
                case Register() as register:
                    msg.reply(await self.register(register))
                case MakeRoom(user_id=user_id, agent_id=agent_id):
                    msg.reply(await self.room_for(user_id, agent_id, "approver"))
                case Deregister(agent_did=did):
                    msg.reply(await self.deregister(did))
                case Settle():
                    msg.reply(None)
                case other:
                    msg.fail(TypeError(f"the registry does not take {type(other).__name__}"))
        except (Conflict, Unservable, NotFound, Unavailable) as exc:
            msg.fail(exc)

    # -- registering ------------------------------------------------------------------

    async def register(self, register: Register) -> tuple[Registration, bool]:
        request = register.request
        if request.request_id is not None:
            earlier = self.registrations.by_request(register.client, request.request_id)
            if earlier is not None:
                if earlier.fingerprint != request.fingerprint:
                    raise Conflict(request.request_id)
                return earlier, False
        room_id = await self.owner_room(request.owner)
        now = self.clock()
        registration = Registration(
            id=new_registration_id(), client=register.client, request_id=request.request_id,
            fingerprint=request.fingerprint, owner=request.owner, label=request.agent.label,
            base_url=request.agent.base_url, workspace_path=str(request.agent.workspace_path),
            approval_id=new_approval_id(), created_at=now, expires_at=now + request.timeout_s,
            callback_url=request.callback_url,
        )
        # The registration first: asked or not, it is kept, and a prompt
        # that did not get out is asked again by settle_all.
        self.registrations.create(registration, signing_key=register.token if request.callback_url else None)
        await self.ask(registration, room_id)
        return registration, True

    async def owner_room(self, owner: str) -> str:
        """Where the owner is asked: their room with their agent (made if they have none)."""
        agent = self.bot.agents.agent_for(owner)
        if agent is None:
            raise Unservable(
                f"{owner} is served by no agent on this node, so the bot has no room to ask them in; "
                "map them to an agent in agents.yaml's user_agents first",
                "owner",
            )
        return await self.room_for(owner, agent.id, "owner")

    async def ask(self, registration: Registration, room_id: str) -> None:
        record = Approval(
            id=registration.approval_id, source=Source.REGISTRATION, client=registration.client, request_id=None,
            fingerprint=registration.fingerprint, approver=registration.owner, agent_id=registration.id,
            action=registration_action(registration.label, registration.base_url, registration.workspace_path),
            details=None, created_at=registration.created_at, expires_at=registration.expires_at, room_id=room_id,
        )
        try:
            # A call, but the approvals actor never calls this one back.
            await self.ctx.registry.lookup(APPROVALS_PATH).call(Ask(record))
        except (ActorError, CallError) as exc:
            self.ctx.log.warning("registry.not_asked_yet", registration_id=registration.id, error=str(exc))
            self.stalled = True

    # -- settling -------------------------------------------------------------------------

    async def settle_all(self) -> None:
        self.stalled = False
        for registration in self.registrations.pending():
            approval = self.approvals.get(registration.approval_id)
            try:
                if approval is None:
                    await self.ask(registration, await self.owner_room(registration.owner))
                elif approval.final:
                    await self.settle(registration, approval)
            except (Unavailable, Unservable) as exc:
                self.ctx.log.warning("registry.not_settled_yet", registration_id=registration.id, error=str(exc))
                self.stalled = True

    async def settle(self, registration: Registration, approval: Approval) -> None:
        status = outcome(approval)
        decided = {"decided_by": approval.decided_by, "decided_at": approval.decided_at}
        if status is not RegStatus.APPROVED:
            self.finish(move(registration, status, **decided))
            return
        if registration.agent_did is None:
            registration = self.registrations.set_did(registration.id, new_did())
        agent = registration.agent()
        self.bot.agents.add(RegisteredAgent(agent, registration.owner, registration.id))
        self.start(agent.id)
        try:
            space_id = await ensure_space(self.ctx, self.bot, registration.owner)
            marker = rules.creation_marker("registered", agent.id)
            room = await create_chat(self.ctx, self.bot, registration.owner, agent.id, space_id, registration.label, marker)
            room_id: str | None = room.room_id
        except MatrixError as exc:
            if not _refused(exc):
                raise Unavailable(str(exc)) from None
            # The agent is served; its room can come with !new in the owner's Space.
            self.ctx.log.warning("registry.room_refused", agent_did=agent.id, error=str(exc))
            room_id = None
        except MatrixFailure as exc:
            raise Unavailable(str(exc)) from None
        self.finish(move(registration, RegStatus.APPROVED, room_id=room_id, **decided))
        self.ctx.log.info("registry.agent_registered", agent_did=agent.id, owner=registration.owner, room_id=room_id)

    def finish(self, moved: Registration) -> None:
        if self.registrations.settle(moved, now=self.clock()) and moved.callback_url:
            self.poke_callbacks()

    def start(self, did: str) -> None:
        """``node/agents/<did>``, started unless it runs already (a set-up done again)."""
        agents = self.ctx.registry.supervisor(AGENTS_PATH)
        try:
            state = agents.child_state(did)
        except LookupError:
            agents.start_child(SupervisorSpec(did))
            return
        if state.status is Status.STOPPED:
            agents.restart_child(did)

    # -- rooms -----------------------------------------------------------------------------

    async def room_for(self, user_id: str, agent_id: str, field: str) -> str:
        """``user_id``'s room with ``agent_id``: the one they used last, or a new
        one in their Space (the Space made first if they have none)."""
        try:
            self.bot.agents.agent(agent_id)
        except KeyError:
            raise Unservable(f"this node serves no agent {agent_id!r}", "agent_id") from None
        if not self.bot.agents.may_serve(user_id, agent_id):
            # A room is a way to talk to the agent: only for its users.
            raise Unservable(
                f"{user_id} is not a user of {agent_id} on this node (agents.yaml user_agents, or the owner of a "
                "registered agent), so the bot will not make them a room with it; ask someone who is",
                field,
            )
        binding = self.bot.store.last_used_room(user_id, agent_id)
        if binding is not None:
            return binding.room_id
        try:
            space_id = await ensure_space(self.ctx, self.bot, user_id)
            marker = rules.creation_marker("asked", user_id, agent_id)
            made = await create_chat(self.ctx, self.bot, user_id, agent_id, space_id, None, marker)
        except MatrixError as exc:
            if not _refused(exc):
                raise Unavailable(str(exc)) from None
            raise Unservable(
                f"the homeserver refused to make {user_id} a room ({exc.errcode}: {exc.message}); "
                "check that the user exists and may be invited",
                field,
            ) from None
        except MatrixFailure as exc:
            raise Unavailable(str(exc)) from None
        self.ctx.log.info("registry.room_made", user_id=user_id, agent_id=agent_id, room_id=made.room_id)
        return made.room_id

    # -- deregistering ------------------------------------------------------------------------

    async def deregister(self, did: str) -> Registration:
        registration = self.registrations.by_did(did)
        if registration is None or registration.status not in (RegStatus.APPROVED, RegStatus.DEREGISTERED):
            if self.bot.agents.configured(did):
                raise Unservable(f"{did} comes from agents.yaml; remove it there and restart the node", "agent_did")
            raise NotFound(did)
        if registration.status is RegStatus.DEREGISTERED:
            return registration  # asked again: the same answer
        now = self.clock()
        moved = move(registration, RegStatus.DEREGISTERED, deregistered_at=now)
        self.registrations.settle(moved, now=now)
        self.bot.agents.remove(did)
        agents = self.ctx.registry.supervisor(AGENTS_PATH)
        try:
            await agents.terminate_child(did)  # its connections close
            agents.delete_child(did)
        except (LookupError, ActorError) as exc:
            self.ctx.log.info("registry.no_supervisor_to_stop", agent_did=did, error=str(exc))
        store = self.bot.store
        told = [
            notice(b.room_id, "agent-deregistered", (did, b.room_id), _DEREGISTERED.format(label=registration.label),
                   error=ERROR_AGENT_REMOVED)
            for b in store.bindings() if b.agent_id == did and not b.archived
        ]
        # Cannot block a loop serving others: tell_outbox never waits.
        await tell_outbox(self.ctx, store.enqueue(told))
        self.ctx.log.info("registry.agent_deregistered", agent_did=did, rooms_told=len(told))
        return moved


def _refused(exc: MatrixError) -> bool:
    """A refusal for good (4xx), not a homeserver asking us to wait or to log in again."""
    return exc.status < 500 and not isinstance(exc, (RateLimited, InvalidToken))


_DEREGISTERED = (
    '⚠ The agent "{label}" was deregistered: this chat no longer goes to any agent. '
    "Its earlier messages stay here; archive the chat with !archive."
)
