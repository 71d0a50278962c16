"""What an approver reads in Matrix: the prompt, its final state, the question
"which one?". Pure text and content; the record stays the truth, the
message is a view of it (edited when the record moves).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..matrix import content as contents
from .record import Approval, Status

__all__ = ["APPROVAL_KEY", "ask_which", "final_text", "prompt_content", "prompt_text"]

#: Content key on a prompt: ``{"id": "apr_..."}`` (SPEC 7.1).
APPROVAL_KEY = "org.lambda.approval"
_DETAILS_SHOWN = 2000


def prompt_text(record: Approval, agent_label: str) -> str:
    lines = [f"🔐 {agent_label} asks for your approval:", "", record.action]
    if record.details is not None:
        details = record.details if isinstance(record.details, str) else json.dumps(record.details, indent=2)
        if len(details) > _DETAILS_SHOWN:
            details = details[:_DETAILS_SHOWN] + f"… ({len(details) - _DETAILS_SHOWN} more characters)"
        lines += ["", f"Details: {details}"]
    lines += [
        "",
        f"React ✅ to approve or ❌ to deny (or reply to this message with !yes / !no). "
        f"No answer by {_hhmm(record.expires_at)} means no.",
    ]
    return "\n".join(lines)


def final_text(record: Approval, agent_label: str) -> str:
    """The prompt's text once decided: what was asked and what became of it."""
    head = f"🔐 {agent_label} asked: {record.action}"
    at = _hhmm(record.decided_at or record.expires_at)
    verdict = {
        Status.APPROVED: f"✅ Approved by {record.decided_by} at {at}",
        Status.DENIED: f"❌ Denied by {record.decided_by} at {at}",
        Status.EXPIRED: f"⌛ Expired at {at}: no answer means no",
        Status.CANCELLED: f"🚫 Withdrawn by the requester at {at}",
    }.get(record.status, "waiting")
    return f"{head}\n\n{verdict}"


def prompt_content(record: Approval, body: str) -> dict[str, Any]:
    content = contents.text(body, msgtype="m.notice")
    content[APPROVAL_KEY] = {"id": record.id}
    return content


def ask_which(candidates: tuple[Approval, ...]) -> str:
    listed = "\n".join(f"{n}. {r.action}" for n, r in enumerate(candidates, 1))
    return (
        "Several requests are waiting for your answer here:\n"
        f"{listed}\n"
        "I did not guess: reply to the one you mean with !yes or !no, or react ✅ / ❌ on it."
    )


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC")
