"""Agent confirmations as approval records (SPEC section 4 and 7.1's last bullet).

An agent's ``payload.kind == "confirm"`` update is a record of the node's
approvals like any other, with ``source = "agent"``: the room's owner is its
approver, the room's agent its agent, and it is shown, answered (one gate:
reactions, replies, ``!yes`` / ``!no``, "which one?"), expired and listed by
the API exactly as a request of the API is. What is particular to it is here:

- **Its id comes from what caused it**: the user message being answered, the
  agent's chat, the confirmation's place in that answer and what it asks.
  The same turn replayed after a crash, asking the same thing, finds the
  record it made before instead of making a second one, and an answer given
  meanwhile counts. Asking something else makes another record.
- **Only the connection that asked waits for it.** When its turn ends
  (answered, failed, stopped) the records of its agent still pending in its
  room are withdrawn (``cancelled``, by way of ``api``: the node withdrew
  them): nobody would hear the answer.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from .messages import Confirm
from .record import Approval, Source

__all__ = ["confirmation_id", "confirmation_record"]

#: The namespace of confirmation ids (uuid5): fixed, so an id is the same in every run.
_NAMESPACE = uuid.UUID("6f1c52a4-4f2e-4a53-9a57-0c8d3b5f6e21")


def confirmation_id(event_id: str, namespace: str, number: int, action: str, details: str) -> str:
    """The record id of confirmation ``number`` of the answer to ``event_id``
    in the chat ``namespace`` (``<agent_id>/<chat_id>``), asking ``action``."""
    cause = "\x00".join((event_id, namespace, str(number), action, details))
    return f"apr_{uuid.uuid5(_NAMESPACE, cause)}"


def confirmation_record(confirm: Confirm, now: float) -> Approval:
    """The pending record for ``confirm``, created ``now``."""
    fingerprint = hashlib.sha256(
        json.dumps([confirm.approver, confirm.agent_id, confirm.action, confirm.details], separators=(",", ":")).encode()
    ).hexdigest()
    return Approval(
        id=confirm.approval_id,
        source=Source.AGENT,
        client=confirm.agent_id,
        # No request id: the API's idempotency key is per client, and agents
        # reuse theirs across chats and turns. The id itself is the key here.
        request_id=None,
        fingerprint=fingerprint,
        approver=confirm.approver,
        agent_id=confirm.agent_id,
        action=confirm.action,
        details=confirm.details or None,
        created_at=now,
        expires_at=now + confirm.timeout_s,
        room_id=confirm.room_id,
    )
