"""How approvals look in Matrix: the prompt in the approver's room, edited
when the record moves, and the "which one?" question.

Every message goes through the outbox with a transaction id derived from the
record (and, for the question, from the answer that caused it), so showing a
record again after a crash posts nothing twice. ``shown`` in the approvals
table remembers the last status shown, so a record is never shown twice
even after the outbox has forgotten its rows.
"""

from __future__ import annotations

from ..bot.actors.outbox import tell_outbox
from ..bot.actors.services import BotServices, notice, txn_id
from ..bot.store import OutboxItem
from ..runtime.context import ActorContext
from .prompt import ask_which, final_text, prompt_content, prompt_text
from .record import Approval, Source
from .registration_store import RegistrationStore
from .store import ApprovalStore

__all__ = ["MatrixViews", "prompt_txn"]


def prompt_txn(approval_id: str) -> str:
    """The prompt's transaction id: rooms find the prompt a reaction points at by it."""
    return txn_id("approval", approval_id)


class MatrixViews:
    def __init__(self, bot: BotServices, approvals: ApprovalStore, registrations: RegistrationStore | None = None) -> None:
        self.bot = bot
        self.approvals = approvals
        self.registrations = registrations

    def agent_label(self, agent_id: str) -> str | None:
        try:
            return self.bot.agents.agent(agent_id).label
        except KeyError:
            return None

    def room_for(self, approver: str, agent_id: str) -> str | None:
        binding = self.bot.store.last_used_room(approver, agent_id)
        return binding.room_id if binding else None

    async def show(self, ctx: ActorContext, record: Approval) -> None:
        if record.room_id is None or self.approvals.shown(record.id) == record.status:
            return
        label = self._asking(record)
        prompt = prompt_txn(record.id)
        if not record.final:
            item = OutboxItem(0, prompt, record.room_id, "m.room.message", prompt_content(record, prompt_text(record, label)))
        else:
            item = OutboxItem(
                0, txn_id("approval-final", record.id), record.room_id, "m.room.message",
                prompt_content(record, final_text(record, label)), replaces_txn=prompt,
            )
        # Why this cannot block a shared loop: the outbox's mailbox is large
        # and the outbox never calls back; the store holds the row anyway.
        await tell_outbox(ctx, self.bot.store.enqueue([item]))
        self.approvals.mark_shown(record.id, record.status)

    def _asking(self, record: Approval) -> str:
        """Who asks: the agent, or for a registration the agent that wants to exist."""
        if record.source is Source.REGISTRATION and self.registrations is not None:
            registration = self.registrations.get(record.agent_id)
            if registration is not None:
                return f"A new agent, {registration.label},"
        return self.agent_label(record.agent_id) or record.agent_id

    async def ask_which(self, ctx: ActorContext, room_id: str, event_id: str, candidates: tuple[Approval, ...]) -> None:
        question = notice(room_id, "approval-which", (event_id,), ask_which(candidates), source=event_id)
        await tell_outbox(ctx, self.bot.store.enqueue([question]))

