"""A blocked task's question to its run's owner, as a record of the node's
approvals (SPEC 8 "An agent task", 7.1).

The record is an agent confirmation (``approvals/agent.py``): the node's
approvals actor (``node/approvals``) shows it in the room the record names
and decides it through its one gate (reactions, replies, ``!yes``/``!no``),
with its deadline (default deny). :class:`approvals.messages.Confirm` takes
the room, so the question goes to **the run's status room** when the run
has one (hybrid mode, once the broadcaster made it), and otherwise to a
room of the owner's with the task's agent (or any room of the owner's).
With no owner, or no room to ask in, the answer is no.

Its id comes from what caused it (run, task, attempt, the request), so a
re-asked question after a restart finds its record instead of making one.
"""

from __future__ import annotations

import trio

from ...approvals.actor import MAX_WAIT_S
from ...approvals.agent import confirmation_id
from ...approvals.messages import Cancel, Confirm, NotFound, Read
from ...approvals.record import Status
from ...bot.actors.services import APPROVALS_PATH, BotServices
from ...runtime.context import ActorContext
from ...runtime.errors import ActorError, CallError
from ..store import DagStore
from .services import ConfirmAsk

__all__ = ["NodeGate"]


class NodeGate:
    def __init__(self, bot: BotServices, store: DagStore) -> None:
        self.bot = bot
        self.store = store

    def room_for(self, ask: ConfirmAsk) -> str | None:
        status_room = self.store.run(ask.run_id).room_id
        if status_room is not None:
            return status_room
        rooms = [b for b in self.bot.store.bindings() if b.owner == ask.owner and not b.archived]
        with_agent = [b for b in rooms if b.agent_id == ask.agent_id]
        chosen = with_agent or rooms
        return chosen[0].room_id if chosen else None

    async def decide(self, ctx: ActorContext, ask: ConfirmAsk) -> bool:
        room_id = self.room_for(ask) if ask.owner is not None else None
        if ask.owner is None or room_id is None:
            ctx.log.warning("dag.confirm_unaskable", session_id=ask.session_id, owner=ask.owner,
                            advice="give the DAG an owner who has a room with the bot; denied meanwhile")
            return False
        approval_id = confirmation_id(
            f"{ask.run_id}:{ask.task_id}:{ask.attempt}", f"dag/{ask.session_id}", 1, ask.action,
            f"{ask.request_id}\x00{ask.details}",
        )
        confirm = Confirm(
            approval_id, ask.agent_id, room_id, ask.owner, ask.action,
            f"DAG run {ask.run_id}, task {ask.task_id}: {ask.details}".strip(), self.bot.timing.confirmation_timeout,
        )
        while True:
            try:
                # A call, but it holds up only this task's attempt: the gate
                # never calls anyone back.
                record = await ctx.registry.lookup(APPROVALS_PATH).call(confirm)
                break
            except (ActorError, CallError):
                await trio.sleep(1.0)  # the gate restarts: ask it again
        try:
            while not record.final:
                try:
                    record = await ctx.registry.lookup(APPROVALS_PATH).call(
                        Read(record.id, MAX_WAIT_S), timeout=MAX_WAIT_S + 10
                    )
                except NotFound:
                    return False
                except (ActorError, CallError):
                    await trio.sleep(1.0)
        finally:
            if not record.final:
                # The task was cancelled or timed out while asking: the
                # question is withdrawn, so the owner is not asked in vain.
                with trio.move_on_after(5.0, shield=True):
                    try:
                        await ctx.registry.lookup(APPROVALS_PATH).call(Cancel(record.id), timeout=5.0)
                    except (ActorError, CallError, NotFound):
                        pass  # it expires at its deadline instead (default deny)
        return record.status is Status.APPROVED
