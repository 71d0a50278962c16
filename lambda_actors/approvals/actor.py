"""``node/approvals``: the one owner of approval decisions.

Every move of a record happens here, so two decisions can never race: the
approver's answer, the deadline, a cancel. Each is written to the store
first (the truth), then shown in Matrix (the view), then told to whoever
waits (``Read`` with ``wait_s``) and to the callback sender.

An agent's confirmation (:mod:`.agent`) is a record like any other: its
connection asks for it (``Confirm``, idempotent by id), waits for its verdict
with a long ``Read``, and withdraws what its turn left pending
(``Withdraw``); the actor never calls the connection back.

Deadlines are kept without polling: the actor waits for its next message
or the earliest deadline, whichever comes first. Deadlines are wall-clock
(``expires_at`` is a time of day), so after a restart every pending record
whose deadline passed while the node was down is expired at once.

How records are shown is behind :class:`Views` (the executor's side: post
the prompt, edit it, ask "which one?"), so the decisions are tested without
a homeserver and the Matrix side is tested on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import trio

from ..runtime.context import ActorContext
from ..runtime.request import Request
from .agent import confirmation_record
from .gate import AskWhich, Decided, Ignored, expire_due, judge
from .messages import Answered, Ask, Cancel, Confirm, Conflict, NoRoom, NotFound, Read, Submit, Unservable, Withdraw
from .record import Approval, Source, Status, Via, decide
from .store import ApprovalStore, new_approval_id

__all__ = ["Views", "approvals_actor"]

MAX_WAIT_S = 60.0


class Views(Protocol):
    """How records are shown to people (Matrix, in production)."""

    def agent_label(self, agent_id: str) -> str | None:
        """The agent's label, or None if the node does not serve it."""

    def room_for(self, approver: str, agent_id: str) -> str | None:
        """Where to ask ``approver`` about ``agent_id``, or None if nowhere."""

    async def show(self, ctx: ActorContext, record: Approval) -> None:
        """Post the prompt (pending) or edit it to its final state. Idempotent:
        called again after a restart, it posts or edits once."""

    async def ask_which(self, ctx: ActorContext, room_id: str, event_id: str, candidates: tuple[Approval, ...]) -> None:
        """Tell the approver that several requests wait and which they are."""


async def approvals_actor(
    ctx: ActorContext, store: ApprovalStore, views: Views, notify_callbacks: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time, on_final: Callable[[Approval], None] = lambda record: None,
) -> None:
    """``on_final`` hears of every record made final here; it must not block
    (the node's registry is told with a ``send_nowait``)."""
    gate = _Gate(ctx, store, views, notify_callbacks, clock)
    gate.on_final = on_final
    await gate.catch_up()
    while True:
        msg = None
        with trio.move_on_after(gate.seconds_to_next_deadline()):
            try:
                msg = await ctx.mailbox.receive()
            except trio.EndOfChannel:
                return
        if msg is not None:
            await gate.handle(msg)
        await gate.expire_due()
        gate.answer_waiters()


class _Gate:
    def __init__(
        self, ctx: ActorContext, store: ApprovalStore, views: Views, notify_callbacks: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.views = views
        self.notify_callbacks = notify_callbacks
        self.clock = clock
        self.on_final: Callable[[Approval], None] = lambda record: None
        #: Readers waiting for a record to become final: id -> [(request, give up at)].
        self.waiting: dict[str, list[tuple[Request[Approval], float]]] = {}

    async def catch_up(self) -> None:
        """After a (re)start: expire what passed its deadline, and make sure
        every pending prompt is shown (a crash between writing a record and
        posting its prompt must not leave it unseen)."""
        await self.expire_due()
        for record in self.store.pending():
            await self.views.show(self.ctx, record)

    def seconds_to_next_deadline(self) -> float:
        now = self.clock()
        expiry = self.store.next_expiry()
        deadlines = [] if expiry is None else [expiry]
        deadlines += [until for waits in self.waiting.values() for _, until in waits]
        return max(0.0, min(deadlines) - now) if deadlines else math.inf

    async def handle(self, msg: object) -> None:
        if not isinstance(msg, Request):
            return
        try:
            match msg.msg:
                case Submit() as submit:
                    msg.reply(await self.submit(submit))
                case Read(approval_id=approval_id, wait_s=wait_s):
                    record = self.get(approval_id)
                    if record.final or wait_s <= 0:
                        msg.reply(record)
                    else:
                        until = self.clock() + min(wait_s, MAX_WAIT_S)
                        self.waiting.setdefault(approval_id, []).append((msg, until))
                case Cancel(approval_id=approval_id):
                    record = self.get(approval_id)
                    if not record.final:
                        record = await self.move(decide(record, Status.CANCELLED, Via.API, at=self.clock()))
                    msg.reply(record)
                case Answered() as answered:
                    msg.reply(await self.answered(answered))
                case Ask(record=record, signing_key=key):
                    msg.reply(await self.ask(record, key))
                case Confirm() as confirm:
                    msg.reply(await self.confirm(confirm))
                case Withdraw(room_id=room_id, agent_id=agent_id):
                    msg.reply(await self.withdraw(room_id, agent_id))
                case other:
                    msg.fail(TypeError(f"the approvals actor does not take {type(other).__name__}"))
        except (Conflict, Unservable, NotFound) as exc:
            msg.fail(exc)

    def get(self, approval_id: str) -> Approval:
        record = self.store.get(approval_id)
        if record is None:
            raise NotFound(approval_id)
        return record

    async def submit(self, submit: Submit) -> tuple[Approval, bool]:
        request = submit.request
        if request.request_id is not None:
            earlier = self.store.by_request(submit.client, request.request_id)
            if earlier is not None:
                if earlier.fingerprint != request.fingerprint:
                    raise Conflict(request.request_id)
                return earlier, False
        if self.views.agent_label(request.agent_id) is None:
            raise Unservable(f"this node serves no agent {request.agent_id!r}", "agent_id")
        room_id = self.views.room_for(request.approver, request.agent_id)
        if room_id is None:
            # The caller has the registry make one (it may take the homeserver
            # a while; this actor does not wait for it) and submits again.
            raise NoRoom(f"{request.approver} has no chat room with {request.agent_id} on this node yet", "approver")
        now = self.clock()
        record = Approval(
            id=new_approval_id(), source=Source.API, client=submit.client, request_id=request.request_id,
            fingerprint=request.fingerprint, approver=request.approver, agent_id=request.agent_id,
            action=request.action, details=request.details, created_at=now, expires_at=now + request.timeout_s,
            callback_url=request.callback_url, room_id=room_id,
        )
        record, created = self.store.create(record, signing_key=submit.token if request.callback_url else None)
        if created:
            await self.views.show(self.ctx, record)
        return record, created

    async def confirm(self, confirm: Confirm) -> Approval:
        """An agent's confirmation (:mod:`.agent`): the record its id names, or a new one."""
        earlier = self.store.get(confirm.approval_id)
        if earlier is not None:
            return earlier
        record, _ = self.store.create(confirmation_record(confirm, now=self.clock()))
        await self.views.show(self.ctx, record)
        return record

    async def withdraw(self, room_id: str, agent_id: str) -> int:
        """Cancel the agent's confirmations still pending in the room."""
        now = self.clock()
        orphans = [
            r for r in self.store.pending()
            if r.source is Source.AGENT and r.room_id == room_id and r.agent_id == agent_id
        ]
        for record in orphans:
            await self.move(decide(record, Status.CANCELLED, Via.API, at=now))
        return len(orphans)

    async def ask(self, record: Approval, signing_key: str | None) -> tuple[Approval, bool]:
        """A record made elsewhere (a registration's): stored and shown once."""
        earlier = self.store.get(record.id)
        if earlier is not None:
            return earlier, False
        record, created = self.store.create(record, signing_key=signing_key)
        await self.views.show(self.ctx, record)
        return record, created

    async def answered(self, answered: Answered) -> Decided | AskWhich | Ignored:
        pending = [r for r in self.store.pending() if r.room_id == answered.room_id]
        verdict = judge(answered.answer, pending, now=self.clock())
        if isinstance(verdict, Decided):
            await self.move(verdict.record)
        elif isinstance(verdict, AskWhich):
            await self.views.ask_which(self.ctx, answered.room_id, answered.event_id, verdict.candidates)
        return verdict

    async def expire_due(self) -> None:
        now = self.clock()
        first = self.store.next_expiry()
        if first is None or first > now:
            return  # the common case: one indexed query, no scan
        for record in expire_due(self.store.pending(), now):
            await self.move(record)

    async def move(self, decided: Approval) -> Approval:
        if not self.store.record_decision(decided, now=self.clock()):
            # Decided already: the first decision stands, and the record,
            # not this attempt, is what the caller gets.
            return self.get(decided.id)
        if decided.callback_url:
            self.notify_callbacks()
        self.on_final(decided)
        await self.views.show(self.ctx, decided)
        return decided

    def answer_waiters(self) -> None:
        if not self.waiting:
            return
        now = self.clock()
        for approval_id in list(self.waiting):
            record = self.store.get(approval_id)
            keep = []
            for request, until in self.waiting[approval_id]:
                if record is not None and (record.final or until <= now):
                    request.reply(record)
                else:
                    keep.append((request, until))
            if keep:
                self.waiting[approval_id] = keep
            else:
                del self.waiting[approval_id]

